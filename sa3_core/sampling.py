"""Timestep schedules, samplers and classifier-free guidance for SA3 (rectified flow).

Everything here is a pure function of tensors: no weights, no global state. The DiT is only seen
through ``model_fn(x, t) -> v`` (samplers) or, for guidance, :class:`DiT`: ``dit.step_constants(conditioning)``
once per conditioning batch and ``dit(x, t, conditioning, constants=...) -> v`` every step.

Conventions (official SA3, ``inference/sampling.py`` and ``models/dit.py`` at 636f906):

* ``x_t = (1 - t) * x0 + t * noise``; t = 1 is pure noise, t = 0 is data.
* The model predicts the velocity ``v ~ noise - x0``; the clean estimate is ``denoised = x - t * v``.
* A schedule is ``(B, steps + 1)`` decreasing from ``sigma_max`` to 0, one row per batch item (the official
  ``generate`` always builds per-item schedules from the effective lengths). A 1-D ``(steps + 1,)`` or
  ``(1, steps + 1)`` schedule is accepted too and shared by every item.

float64 is never used (MPS has none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .validation import finite_number

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model_fn(x (B, C, L), t (B,)) -> v (B, C, L)``."""

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""``callback(step, total_steps, x, denoised)``, called once per step after the model evaluation and
before ``x`` is updated. ``step`` counts from 0; ``x`` is the current noisy latent, ``denoised`` its clean
estimate ``x - t * v`` (what a preview decodes). Raising from the callback (e.g. ComfyUI's interrupt
exception) aborts sampling: the exception propagates unchanged, nothing is left half-done because the
samplers hold no state outside the call."""

SAMPLERS: tuple[str, ...] = ("pingpong", "euler", "rk4", "dpmpp")


# ---------------------------------------------------------------------------------------------------
# Distribution shifts: warp a linear t in [0, 1] per item, depending on the item's sequence length.
# Every shift maps t (N,) and seq_len (B,) float32 to (B, N).
# ---------------------------------------------------------------------------------------------------


class DistributionShift(Protocol):
    def __call__(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor: ...


def _check_finite_fields(shift: object) -> None:
    """Every number of a shift's settings must be finite (a NaN here makes every timestep NaN)."""
    for f in fields(shift):  # type: ignore[arg-type]
        value = getattr(shift, f.name)
        if not isinstance(value, bool):
            finite_number(value, f"distribution shift {f.name}")


@dataclass(frozen=True)
class LogSNRShift:
    """Uniform steps in log-SNR: ``t' = sigmoid(-(end - t * (end - start)))``.

    ``start = anchor_logsnr - rate * log2(seq_len / anchor_length)`` (the critical log-SNR drops by
    ``rate`` per doubling of the length). With ``rate = 0`` (the SA3 default) the length does not matter:
    ``t' = sigmoid(8.2 t - 2)``. The endpoints are pinned: ``t <= 0 -> 0`` and ``t >= 1 -> 1``.
    Field defaults are the official class defaults (``rate`` 1.0); the SA3 default shift is
    :func:`default_sampling_shift`.
    """

    anchor_length: float = 2000
    anchor_logsnr: float = -6.2
    rate: float = 1.0
    logsnr_end: float = 2.0

    def __post_init__(self) -> None:
        _check_finite_fields(self)

    def __call__(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        start = self.anchor_logsnr - self.rate * torch.log2(seq_len.float() / self.anchor_length)
        logsnr = self.logsnr_end - t[None, :] * (self.logsnr_end - start[:, None])
        shifted = torch.sigmoid(-logsnr)
        shifted = torch.where(t <= 0, torch.zeros_like(shifted), shifted)
        return torch.where(t >= 1, torch.ones_like(shifted), shifted)


@dataclass(frozen=True)
class FluxShift:
    """Flux/SD3 shift ``t' = a t / (1 + (a - 1) t)``.

    ``a`` is interpolated log-linearly in the length, from ``alpha_min`` at ``min_length`` to
    ``alpha_max`` at ``max_length`` (lengths clamped to that range).
    """

    min_length: float = 256
    max_length: float = 4096
    alpha_min: float = 1.0
    alpha_max: float = 1.0

    def __post_init__(self) -> None:
        _check_finite_fields(self)

    def alpha(self, seq_len: torch.Tensor) -> torch.Tensor:
        log_min, log_max = math.log(self.min_length), math.log(self.max_length)
        if log_max == log_min:
            log_max += 1e-8  # constant alpha: avoid 0/0, as the official code does
        log_alpha_min = math.log(max(self.alpha_min, 1e-8))
        log_alpha_max = math.log(max(self.alpha_max, 1e-8))
        log_len = torch.log(seq_len.float().clamp(self.min_length, self.max_length))
        frac = (log_len - log_min) / (log_max - log_min)
        return torch.exp(log_alpha_min + frac * (log_alpha_max - log_alpha_min))

    def __call__(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha(seq_len)[:, None]
        t = t[None, :]
        return alpha * t / (1 + (alpha - 1.0) * t)


@dataclass(frozen=True)
class FullShift:
    """The "full" (SD3-style exponential) shift, ``t' = 1 - e^mu / (e^mu + t / (1 - t))``.

    ``mu = -(base_shift + (max_shift - base_shift) * (len - min_length) / (max_length - min_length))`` with
    the length clamped to ``[min_length, max_length]``. ``use_sine`` then applies ``sin(pi t' / 2)``.
    This is the *training* shift of the released configs (``distribution_shift_options``); the TensorRT
    port applies it at inference, the official ``generate`` does not.
    """

    base_shift: float = 0.5
    max_shift: float = 1.15
    max_length: float = 4096
    min_length: float = 256
    use_sine: bool = False

    def __post_init__(self) -> None:
        _check_finite_fields(self)

    def __call__(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        length = seq_len.float().clamp(self.min_length, self.max_length)[:, None]
        mu = -(
            self.base_shift
            + (self.max_shift - self.base_shift) * (length - self.min_length) / (self.max_length - self.min_length)
        )
        odds = 1 / (1 - t[None, :]) - 1  # t / (1 - t), written as the official code does (inf at t = 1)
        shifted = 1 - torch.exp(mu) / (torch.exp(mu) + odds)
        if self.use_sine:
            shifted = torch.sin(shifted * math.pi / 2)
        return shifted


@dataclass(frozen=True)
class NoShift:
    """Identity: the linear schedule as is."""

    def __call__(self, t: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        return t[None, :].expand(seq_len.shape[0], -1)


_SHIFT_TYPES: dict[str, type] = {"logsnr": LogSNRShift, "flux": FluxShift, "full": FullShift, "none": NoShift}


def default_sampling_shift() -> LogSNRShift:
    """What SA3 samples with when ``sampling_distribution_shift_options`` is null (every released config)."""
    return LogSNRShift(rate=0.0, anchor_logsnr=-6.2, logsnr_end=2.0)


def shift_from_options(options: Mapping[str, Any] | None) -> DistributionShift:
    """Build a shift from a ``sampling_distribution_shift_options``-style dict.

    ``None`` gives :func:`default_sampling_shift`. Otherwise ``options["type"]`` (default ``"full"``, as
    official) is one of ``logsnr``, ``flux``, ``full``, ``none`` and every other key is a field of that
    shift. Unknown types or keys raise ``ValueError``.
    """
    if options is None:
        return default_sampling_shift()
    kwargs = dict(options)
    kind = kwargs.pop("type", "full")
    if kind not in _SHIFT_TYPES:
        raise ValueError(f"unknown distribution shift type {kind!r} (expected one of {', '.join(_SHIFT_TYPES)})")
    cls = _SHIFT_TYPES[kind]
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"distribution shift {kind!r}: unknown option(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    return cls(**kwargs)


def build_schedule(
    steps: int,
    sigma_max: float = 1.0,
    shift: DistributionShift | None = None,
    seq_len: torch.Tensor | Sequence[float] | int = 1,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-item timestep schedule ``(B, steps + 1)``, float32, from ``sigma_max`` down to 0.

    Official recipe (``build_schedule``), quirk included: ``t = linspace(sigma_max, 0, steps + 1)``, shift
    each row with its item's length (clamped to >= 1), then re-pin ONLY the first point to ``sigma_max``.
    With ``sigma_max < 1`` (init audio) the second point is therefore ``shift((steps-1)/steps * sigma_max)``,
    which can be above ``sigma_max`` (0.9 -> 0.9885 at 8 steps).

    ``seq_len``: per-item effective lengths in latents (``B`` values), or one int for ``B = 1``.
    ``shift=None`` uses no shift at all (identity); pass :func:`default_sampling_shift` for SA3's default.

    Unlike the official code, the result is always 2-D, also when ``B == steps + 1`` (there the official
    shifts pair item ``i`` with step ``i``; with the default rate-0 shift this makes no difference).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lengths = torch.as_tensor([seq_len] if isinstance(seq_len, int) else seq_len, dtype=torch.float32, device=device)
    lengths = lengths.reshape(-1).clamp(min=1)
    t = torch.linspace(sigma_max, 0, steps + 1, dtype=torch.float32, device=lengths.device)
    schedule = (shift or NoShift())(t, lengths).clone()
    schedule[:, 0] = sigma_max
    return schedule


def mix_init(init_latents: torch.Tensor, noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Start point for audio-to-audio: ``init * (1 - sigma_max) + noise * sigma_max`` (official order)."""
    return init_latents * (1 - sigma_max) + noise * sigma_max


# ---------------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------------


def _per_item(schedule: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B, N) schedule on x's device, from (N,), (1, N) or (B, N)."""
    if schedule.ndim == 1:
        schedule = schedule[None, :]
    if schedule.ndim != 2 or schedule.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"schedule of shape {tuple(schedule.shape)} does not fit a batch of {x.shape[0]}")
    if schedule.shape[-1] < 2:
        raise ValueError("a schedule needs at least 2 points (one step)")
    return schedule.to(x.device).expand(x.shape[0], -1)


def _col(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1), to broadcast a per-item scalar over (B, C, L)."""
    return t.view(-1, 1, 1)


def sample_pingpong(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ping-pong sampling for distilled models: jump to the clean estimate, re-noise to the next t.

    ``d = x - t_i v``; ``x <- (1 - t_{i+1}) d + t_{i+1} n`` with fresh noise ``n`` EVERY step, including the
    last one (where ``t_{i+1} = 0`` discards it): ``steps`` draws shaped like ``x``.
    Noise comes from ``torch.randn_like(x)`` (the global generator of x's device, the official behaviour
    after ``torch.manual_seed(seed)``) unless an explicit ``generator`` is given; that one draws in float32
    and casts to ``x``'s dtype, so one seed gives the same noise in every precision (``randn`` in bf16 or
    fp16 draws entirely different numbers than in fp32, which decorrelates a whole run).
    """
    sched = _per_item(schedule, x)
    total = sched.shape[-1] - 1
    for i in range(total):
        t_curr = sched[:, i].to(x.dtype)
        t_next = sched[:, i + 1].to(x.dtype)
        denoised = x - _col(t_curr) * model_fn(x, t_curr)
        if callback is not None:
            callback(i, total, x, denoised)
        if generator is None:
            noise = torch.randn_like(x)
        else:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device).to(x.dtype)
        x = (1 - _col(t_next)) * denoised + _col(t_next) * noise
    return x


def sample_euler(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: torch.Tensor,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler on the flow ODE: ``x <- x + (t_{i+1} - t_i) v``. Deterministic (draws no noise)."""
    sched = _per_item(schedule, x)
    total = sched.shape[-1] - 1
    for i in range(total):
        t_curr = sched[:, i].to(x.dtype)
        t_next = sched[:, i + 1].to(x.dtype)
        v = model_fn(x, t_curr)
        if callback is not None:
            callback(i, total, x, x - _col(t_curr) * v)
        x = x + _col(t_next - t_curr) * v
    return x


def sample_rk4(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: torch.Tensor,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Classic 4th-order Runge-Kutta in t, 4 model calls per step; k4 is evaluated at ``max(t_{i+1}, 1e-5)``
    (the model is never called at t = 0).

    The official ``sample_rk4`` only accepts a 1-D schedule shared by the batch; this version steps each
    item with its own row (``dt`` and the midpoint times are per item), which reduces exactly to the
    official update when all rows are equal.
    """
    sched = _per_item(schedule, x)
    total = sched.shape[-1] - 1
    for i in range(total):
        t_curr, t_next = sched[:, i], sched[:, i + 1]
        dt = t_next - t_curr
        t_mid = t_curr + dt / 2
        k1 = model_fn(x, t_curr.to(x.dtype))
        if callback is not None:
            callback(i, total, x, x - _col(t_curr) * k1)
        k2 = model_fn(x + _col(dt / 2) * k1, t_mid.to(x.dtype))
        k3 = model_fn(x + _col(dt / 2) * k2, t_mid.to(x.dtype))
        k4 = model_fn(x + _col(dt) * k3, t_next.clamp(min=1e-5).to(x.dtype))
        x = (x + _col(dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)).to(x.dtype)
    return x


def _log_snr(t: torch.Tensor) -> torch.Tensor:
    """``log((1 - t) / t)`` with both terms clamped to 1e-10, as the official dpmpp does."""
    return ((1 - t).clamp(min=1e-10) / t.clamp(min=1e-10)).log()


def sample_dpmpp(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: torch.Tensor,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) for rectified flow.

    ``c = (t_{i+1} - t_i) / ((1 - t_{i+1}) t_i)``; first-order step ``x <- (t_{i+1}/t_i) x - (1 - t_{i+1}) c d``
    on the first step and when every item reaches t = 0; otherwise ``d`` is replaced by the extrapolation
    ``(1 + 1/(2r)) d - 1/(2r) d_prev`` with ``r = h_prev / h`` in log-SNR. The schedule math stays in the
    schedule's float32 (the model gets float32 t, as official); x is cast back to its dtype after each step.
    """
    sched = _per_item(schedule, x)
    total = sched.shape[-1] - 1
    dtype = x.dtype
    previous: torch.Tensor | None = None
    for i in range(total):
        t_curr, t_next = _col(sched[:, i]), _col(sched[:, i + 1])
        denoised = x - t_curr * model_fn(x, sched[:, i])
        if callback is not None:
            callback(i, total, x, denoised)
        coeff = (t_next - t_curr) / ((1 - t_next).clamp(min=1e-10) * t_curr.clamp(min=1e-10))
        target = denoised
        if previous is not None and not bool((t_next == 0).all()):
            t_prev = _col(sched[:, i - 1])
            h = _log_snr(t_next) - _log_snr(t_curr)
            h_last = _log_snr(t_curr) - _log_snr(t_prev)
            r = h_last / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = ((t_next / t_curr.clamp(min=1e-10)) * x - (1 - t_next) * coeff * target).to(dtype)
        previous = denoised
    return x


def sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: torch.Tensor,
    *,
    sampler: str = "pingpong",
    callback: StepCallback | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``sampler`` (one of :data:`SAMPLERS`) from ``x`` along ``schedule``; returns the final latents.

    ``generator`` only matters for pingpong (the only sampler that draws noise).
    """
    if sampler == "pingpong":
        return sample_pingpong(model_fn, x, schedule, callback=callback, generator=generator)
    if sampler == "euler":
        return sample_euler(model_fn, x, schedule, callback=callback)
    if sampler == "rk4":
        return sample_rk4(model_fn, x, schedule, callback=callback)
    if sampler == "dpmpp":
        return sample_dpmpp(model_fn, x, schedule, callback=callback)
    raise ValueError(f"unknown sampler {sampler!r} (expected one of {', '.join(SAMPLERS)})")


# ---------------------------------------------------------------------------------------------------
# Guidance: turn a conditioned DiT into model_fn(x, t)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuidanceOptions:
    """Classifier-free guidance settings (official names and defaults).

    ``cfg_scale`` 1 disables guidance entirely (one forward on the plain batch). ``apg_scale`` 0 is vanilla
    CFG, 1 keeps only the part of the guidance orthogonal to the conditional estimate (APG, the default),
    values in between blend. ``cfg_interval`` (lo, hi): guidance only while ``lo <= t <= hi``, tested on
    batch item 0. ``cfg_norm_threshold`` > 0 caps the per-item norm of the guidance difference.
    ``scale_phi`` > 0 rescales the guided velocity towards the conditional one's channel std.
    """

    cfg_scale: float = 1.0
    apg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_norm_threshold: float = 0.0
    scale_phi: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cfg_scale", "apg_scale", "cfg_norm_threshold", "scale_phi"):
            finite_number(getattr(self, name), name)
        interval = self.cfg_interval
        if not (isinstance(interval, (tuple, list)) and len(interval) == 2):
            raise ValueError(f"cfg_interval must be a (low, high) pair, got {interval!r}")
        for bound in interval:
            finite_number(bound, "cfg_interval")


@dataclass(frozen=True)
class DiTConditioning:
    """The DiT's conditioning for one batch.

    ``cross_attn_cond`` (B, 257, 768): prompt tokens + the seconds token. ``global_cond`` (B, 768).
    ``local_add_cond`` (B, 257, L): inpaint mask + masked latents (L + 1 for an odd SAME-S window's inpaint
    source: see ``StableAudioModel.inpaint_condition``). ``padding_mask`` (B, L) bool, True = valid.
    ``negative_cross_attn_cond`` (B, 257, 768) or None, with ``negative_cross_attn_mask`` (B, 257) bool
    (True = real token; see :func:`negative_token_mask`). The negative global conditioning is not used by
    the official DiT, so there is no field for it.
    """

    cross_attn_cond: torch.Tensor
    global_cond: torch.Tensor
    local_add_cond: torch.Tensor
    padding_mask: torch.Tensor | None = None
    negative_cross_attn_cond: torch.Tensor | None = None
    negative_cross_attn_mask: torch.Tensor | None = None


def negative_token_mask(prompt_mask: torch.Tensor) -> torch.Tensor:
    """(B, 256) prompt attention mask -> (B, 257) mask of the cross-attention tokens (seconds token kept)."""
    ones = torch.ones(prompt_mask.shape[0], 1, dtype=torch.bool, device=prompt_mask.device)
    return torch.cat([prompt_mask.bool(), ones], dim=1)


def unconditional_context(
    cross_attn_cond: torch.Tensor,
    negative_cross_attn_cond: torch.Tensor | None = None,
    negative_cross_attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The cross-attention context of the unconditional half of the CFG batch (official behaviour).

    Without a negative prompt: all zeros, the seconds token included. With one: the negative embeddings
    with the rows where ``negative_cross_attn_mask`` is False set to 0 (so pad rows are zeros, NOT the
    learned padding embedding the positive branch has) and the seconds token kept.
    """
    if negative_cross_attn_cond is None:
        return torch.zeros_like(cross_attn_cond)
    negative = negative_cross_attn_cond.to(cross_attn_cond.dtype)
    if negative_cross_attn_mask is None:
        return negative
    keep = negative_cross_attn_mask.to(device=negative.device, dtype=torch.bool).unsqueeze(2)
    return torch.where(keep, negative, torch.zeros_like(negative))


def apg_project(
    diff: torch.Tensor, direction: torch.Tensor, padding_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``diff`` (B, C, L) into parts parallel and orthogonal to ``direction``, per item, in float32.

    Without a mask: ``u = direction / max(||direction||, 1e-12)`` and ``par = <diff, u> u``, ``orth = diff - par``
    (norms and dot products over (C, L) of each item). With a padding mask m (B, L), only valid positions
    count: ``u = (direction m) / max(||direction m||, 1e-8)``, ``par = <diff m, u> u``,
    ``orth = (diff - <diff, u> u) m`` (padded positions get no guidance). Results come back in diff's dtype.
    """
    dtype = diff.dtype
    diff, direction = diff.float(), direction.float()
    if padding_mask is None:
        unit = F.normalize(direction, dim=(-2, -1))
        along = (diff * unit).sum(dim=(-2, -1), keepdim=True)
        parallel = along * unit
        orthogonal = diff - parallel
    else:
        mask = padding_mask.unsqueeze(1).float()
        masked_dir = direction * mask
        unit = masked_dir / masked_dir.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-8)
        parallel = (diff * mask * unit).sum(dim=(-2, -1), keepdim=True) * unit
        orthogonal = (diff - (diff * unit).sum(dim=(-2, -1), keepdim=True) * unit) * mask
    return parallel.to(dtype), orthogonal.to(dtype)


def guide(
    x: torch.Tensor,
    t: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor,
    options: GuidanceOptions,
    padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine conditional and unconditional velocities into the guided velocity (float32 math).

    ``d_c = x - t v_c``, ``d_u = x - t v_u``, ``diff = d_c - d_u`` (optionally capped to
    ``cfg_norm_threshold`` per item, norm over valid positions), ``g`` = diff (apg 0), its APG-orthogonal
    part (apg 1) or the blend; ``d = d_c + (cfg_scale - 1) g``; ``v = (x - d) / t``; then the optional
    rescale ``v <- phi v std_C(v_c)/std_C(v) + (1 - phi) v``. Returned in x's dtype. t must be > 0.
    """
    x32, sigma = x.float(), _col(t.float())
    v_cond32 = v_cond.float()
    cond_denoised = x32 - v_cond32 * sigma
    uncond_denoised = x32 - v_uncond.float() * sigma
    diff = cond_denoised - uncond_denoised

    if options.cfg_norm_threshold > 0:
        measured = diff if padding_mask is None else diff * padding_mask.unsqueeze(1).float()
        norm = measured.norm(p=2, dim=(-2, -1), keepdim=True)
        diff = diff * torch.clamp(options.cfg_norm_threshold / norm, max=1.0)

    if options.apg_scale == 0.0:
        guidance = diff
    else:
        _, orthogonal = apg_project(diff, cond_denoised, padding_mask)
        if options.apg_scale == 1.0:
            guidance = orthogonal
        else:
            guidance = options.apg_scale * orthogonal + (1 - options.apg_scale) * diff

    guided = cond_denoised + (options.cfg_scale - 1) * guidance
    v = (x32 - guided) / sigma

    if options.scale_phi != 0.0:
        ratio = v_cond32.std(dim=1, keepdim=True) / v.std(dim=1, keepdim=True)
        v = options.scale_phi * (v * ratio) + (1 - options.scale_phi) * v
    return v.to(x.dtype)


class DiT(Protocol):
    """What guidance needs of the network (:class:`sa3_core.dit.DiffusionTransformer`): its step-invariant
    work computed once per conditioning batch, and a forward that takes it back."""

    def step_constants(
        self,
        cross_attn_cond: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None,
        latents: int,
    ) -> Any: ...

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cross_attn_cond: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        *,
        constants: Any = None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class _Variant:
    """One batch of DiT conditioning: the plain batch, or the CFG-doubled [cond, uncond] one."""

    cross_attn_cond: torch.Tensor
    global_cond: torch.Tensor
    local_add_cond: torch.Tensor
    padding_mask: torch.Tensor | None


class GuidedModel:
    """``model_fn(x, t)`` for the samplers: one DiT forward per call, with batched CFG when active.

    When guidance is active (``cfg_scale != 1`` and item 0's t inside ``cfg_interval``) the DiT runs ONCE
    on a 2B batch: [x, x], [t, t], [positive context, :func:`unconditional_context`], and the global, local
    and padding conditioning duplicated; then :func:`guide` combines the halves. Otherwise it runs once on
    the plain B batch and the negative prompt is not used at all. The doubled conditioning is built once.

    Each variant's step constants (``dit.step_constants``: what the forward derives from the conditioning
    alone) are computed at its first step and passed to every later forward; a variant never used costs
    nothing. :meth:`forget_constants` drops them, for when the weights they came from change (per-step
    LoRA gating).
    """

    def __init__(self, dit: DiT, cond: DiTConditioning, options: GuidanceOptions = GuidanceOptions()):
        self.dit = dit
        self.cond = cond
        self.options = options
        plain = _Variant(cond.cross_attn_cond, cond.global_cond, cond.local_add_cond, cond.padding_mask)
        self._variants = {"plain": plain}
        if options.cfg_scale != 1.0:
            uncond = unconditional_context(
                cond.cross_attn_cond, cond.negative_cross_attn_cond, cond.negative_cross_attn_mask
            )
            mask = cond.padding_mask
            self._variants["doubled"] = _Variant(
                torch.cat([cond.cross_attn_cond, uncond]),
                torch.cat([cond.global_cond, cond.global_cond]),
                torch.cat([cond.local_add_cond, cond.local_add_cond]),
                None if mask is None else torch.cat([mask, mask]),
            )
        self._constants: dict[str, Any] = {}  # variant name -> its step constants, once computed

    def forget_constants(self) -> None:
        """Recompute the step constants at the next step (the weights they were computed from changed)."""
        self._constants.clear()

    def guidance_active(self, t: torch.Tensor) -> bool:
        if self.options.cfg_scale == 1.0:
            return False
        lo, hi = self.options.cfg_interval
        first = t[0].float()  # compared in float32, like the official tensor comparison
        return bool((first >= lo) & (first <= hi))

    def _forward(self, variant: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self._variants[variant]
        if variant not in self._constants:
            self._constants[variant] = self.dit.step_constants(
                c.cross_attn_cond, c.global_cond, c.local_add_cond, x.shape[-1]
            )
        return self.dit(
            x,
            t,
            c.cross_attn_cond,
            c.global_cond,
            c.local_add_cond,
            padding_mask=c.padding_mask,
            constants=self._constants[variant],
        )

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.guidance_active(t):
            return self._forward("plain", x, t)
        v_cond, v_uncond = self._forward("doubled", torch.cat([x, x]), torch.cat([t, t])).chunk(2, dim=0)
        return guide(x, t, v_cond, v_uncond, self.options, self.cond.padding_mask)
