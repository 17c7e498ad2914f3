"""Lengths and masks: seconds -> samples -> latents, padding masks, inpaint masks, request checks, output.

All pure functions. Formulas follow the official ``StableAudioModel.generate`` (``model.py``) and
``data/utils.py`` at 636f906 (``_adapt_sample_size``; tests/core/test_masks.py has worked examples).

Vocabulary (SA3 numbers in brackets):

* sample rate ``sr`` [44100], ``downsampling_ratio`` ``ds`` = samples per latent [4096];
* the *window*: the audio the model generates, ``audio_sample_size`` samples = ``L`` latents, longer than
  the request by ``padding_sec`` [6 s] and rounded up;
* an item's *effective length*: the latents its own duration covers, ``ceil(int(s * sr) / ds)``;
* *valid* latents: effective length plus a headroom of ``int(padding_sec * sr / ds)`` [64] latents, capped at
  ``L``. The DiT only attends to valid latents (padding mask) and decoded audio past them is zeroed.

Inpaint masks use the official convention: **1 = keep the given audio, 0 = generate**.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, Sequence, TypeVar

import torch
import torch.nn.functional as F

Region = tuple[float, float]
"""``(start_seconds, end_seconds)`` of a span to regenerate."""

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------
# Window, effective length, padding mask
# ---------------------------------------------------------------------------------------------------


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def adapt_sample_size(
    max_seconds: float,
    padding_sec: float,
    sample_rate: int,
    downsampling_ratio: int,
    latent_align: int,
    sample_size_cap: int,
) -> int:
    """Samples the model generates for a batch whose longest item lasts ``max_seconds``.

    Official ``_adapt_sample_size``: ``int((max_seconds + padding_sec) * sr)`` rounded up to a multiple of
    ``ds``, then to a multiple of ``ds * latent_align`` (SAME chunk alignment: ``chunk_size // stride``, 2
    for SA3), then capped at ``sample_size_cap`` (use the config's ``sample_size``). ``max_seconds <= 0``
    gives the cap.
    """
    if max_seconds <= 0:
        return sample_size_cap
    target = int((max_seconds + padding_sec) * sample_rate)
    target = _round_up(target, downsampling_ratio)
    target = _round_up(target, downsampling_ratio * latent_align)
    return min(target, sample_size_cap)


def latent_length(audio_sample_size: int, downsampling_ratio: int) -> int:
    """Latents ``L`` of a window of ``audio_sample_size`` samples (``audio_sample_size // ds``)."""
    return audio_sample_size // downsampling_ratio


def effective_length(seconds: float, sample_rate: int, downsampling_ratio: int) -> int:
    """Latents covering ``seconds`` of audio: ``ceil(int(seconds * sr) / ds)``."""
    return -(-int(seconds * sample_rate) // downsampling_ratio)


def effective_lengths(
    seconds: Sequence[float], sample_rate: int, downsampling_ratio: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-item :func:`effective_length` as a (B,) int64 tensor (the schedule's ``seq_len``)."""
    return torch.tensor([effective_length(s, sample_rate, downsampling_ratio) for s in seconds], dtype=torch.long, device=device)


def headroom_latents(padding_sec: float, sample_rate: int, downsampling_ratio: int) -> int:
    """Latents kept valid past each item's end: ``int(padding_sec * sr / ds)`` (64 for 6 s)."""
    return int(padding_sec * sample_rate / downsampling_ratio)


def valid_lengths(
    seconds: Sequence[float],
    latent_len: int,
    padding_sec: float,
    sample_rate: int,
    downsampling_ratio: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-item valid latents ``min(effective + headroom, L)``, (B,) int64."""
    eff = effective_lengths(seconds, sample_rate, downsampling_ratio, device)
    return (eff + headroom_latents(padding_sec, sample_rate, downsampling_ratio)).clamp(max=latent_len)


def padding_mask(
    seconds: Sequence[float],
    latent_len: int,
    padding_sec: float,
    sample_rate: int,
    downsampling_ratio: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, L) bool, True where ``t < valid_b`` (see :func:`valid_lengths`)."""
    valid = valid_lengths(seconds, latent_len, padding_sec, sample_rate, downsampling_ratio, device)
    positions = torch.arange(latent_len, device=valid.device)
    return positions[None, :] < valid[:, None]


# ---------------------------------------------------------------------------------------------------
# Inpaint masks
# ---------------------------------------------------------------------------------------------------


def _is_region(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def regions_to_sample_mask(
    regions: Sequence[Region], num_samples: int, sample_rate: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(num_samples,) float32 ones, with ``[int(start * sr) : int(end * sr)]`` set to 0 for every region.

    Both bounds are clipped to ``num_samples`` (official). Overlapping regions simply overlap.
    """
    mask = torch.ones(num_samples, dtype=torch.float32, device=device)
    for start, end in regions:
        mask[min(int(start * sample_rate), num_samples) : min(int(end * sample_rate), num_samples)] = 0
    return mask


def continuation_region(source_seconds: float, duration: float) -> Region:
    """The region to generate when continuing ``source_seconds`` of audio up to ``duration``."""
    if not source_seconds < duration:
        raise ValueError(
            f"continuation: the source audio ({source_seconds:.3f} s) must be shorter than the requested duration ({duration:.3f} s)"
        )
    return (float(source_seconds), float(duration))


def inpaint_mask_samples(
    batch_size: int,
    num_samples: int,
    sample_rate: int,
    seconds_total: Sequence[float],
    *,
    regions: Sequence[Region] | Sequence[Sequence[Region]] | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The inpaint mask in samples, (B, N) float32, before it is reduced to latents.

    Give either ``regions`` (seconds; one list of ``(start, end)`` shared by every item, or a list of
    ``batch_size`` such lists, one per item) or a prebuilt ``mask`` in samples ((N',), (1, N') or (B, N');
    1 = keep, 0 = generate). A prebuilt mask longer than the window (``num_samples``) is cut to it (official);
    a shorter one is padded with 0 (generate). The official code stretches a shorter mask over the window,
    which moves its regions in time; it documents full-length masks only, and those behave the same here.

    Regions are checked with :func:`validate_regions` against each item's duration.
    Then, as in training, each item's mask is zeroed from ``int(seconds_total[b] * sr)`` on: audio past the
    requested duration is always generated. (The official code uses the batch's longest duration for
    every item; with equal durations, the only batched case it can run, the two agree.)
    """
    if (regions is None) == (mask is None):
        raise ValueError("give exactly one of regions or mask")
    if len(seconds_total) != batch_size:
        raise ValueError(f"seconds_total has {len(seconds_total)} values for a batch of {batch_size}")

    if regions is not None:
        shared = all(_is_region(r) for r in regions)
        if not shared and len(regions) != batch_size:
            raise ValueError(f"per-item regions: got {len(regions)} lists for a batch of {batch_size}")
        item_regions = [regions] * batch_size if shared else list(regions)
        for b, (item, seconds) in enumerate(zip(item_regions, seconds_total)):
            validate_regions(item, seconds, name=f"item {b}: inpaint region")  # type: ignore[arg-type]
        if shared:
            rows = regions_to_sample_mask(regions, num_samples, sample_rate, device)[None].expand(batch_size, -1)  # type: ignore[arg-type]
        else:
            rows = torch.stack([regions_to_sample_mask(r, num_samples, sample_rate, device) for r in item_regions])  # type: ignore[arg-type]
    else:
        assert mask is not None
        rows = mask.to(device=device, dtype=torch.float32)
        if not torch.isfinite(rows).all():
            raise ValueError("inpaint mask contains NaN or infinite values (expected 1 = keep, 0 = generate)")
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[0] not in (1, batch_size):
            raise ValueError(f"inpaint mask of shape {tuple(mask.shape)} does not fit a batch of {batch_size} (expected (N,), (1, N) or (B, N))")
        rows = F.pad(rows[:, :num_samples], (0, max(0, num_samples - rows.shape[-1])), value=0.0)
        rows = rows.expand(batch_size, -1)

    rows = rows.clone()
    for b, seconds in enumerate(seconds_total):
        if seconds > 0:
            rows[b, int(seconds * sample_rate) :] = 0
    return rows


def mask_to_latents(mask: torch.Tensor, latent_len: int) -> torch.Tensor:
    """(B, N) sample mask -> (B, L) latent mask by nearest interpolation.

    For ``N = L * ds`` latent ``i`` takes the value of sample ``i * ds``, the first sample of its frame: a
    latent is regenerated exactly when the first sample of its frame lies in a region.
    """
    return F.interpolate(mask[:, None].float(), size=latent_len, mode="nearest")[:, 0]


def inpaint_mask(
    batch_size: int,
    audio_sample_size: int,
    latent_len: int,
    sample_rate: int,
    seconds_total: Sequence[float],
    *,
    regions: Sequence[Region] | Sequence[Sequence[Region]] | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The DiT's inpaint mask channel, (B, 1, L) float32: :func:`inpaint_mask_samples` then
    :func:`mask_to_latents`. Without an inpaint request the official mask is ``zeros(B, 1, L)``."""
    samples = inpaint_mask_samples(
        batch_size, audio_sample_size, sample_rate, seconds_total, regions=regions, mask=mask, device=device
    )
    return mask_to_latents(samples, latent_len)[:, None]


# ---------------------------------------------------------------------------------------------------
# Request validation (raise before any work is done)
# ---------------------------------------------------------------------------------------------------


MAX_BATCH = 64
"""The most items one generation takes, however the batch is formed (``batch_size``, prompt or duration
lists, ``conditioning`` dicts, ``---``-separated prompts in the nodes). Every item costs memory in every
stage, so an unbounded batch is an unbounded allocation."""

SAMPLE_RATE_RANGE = (1_000, 384_000)
"""Sample rates (Hz) accepted for input audio: telephone-grade to the highest studio rate. Outside this a
header is broken or the file is not audio, and resampling it would only waste time."""


def finite_number(value: object, name: str, error: type[ValueError] = ValueError) -> float:
    """``value`` as a float when it is a finite real number; ``error(...)`` naming ``name`` otherwise.

    NaN passes every ``<``/``>`` range check (ComfyUI's widget min/max included) and ``x or default`` keeps
    it, so every float that enters a generation comes through here first."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return float(value)


def validate_batch_size(size: object, name: str = "batch_size") -> int:
    """A batch of ``size`` items: an integer in [1, :data:`MAX_BATCH`]."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {size!r}")
    if size > MAX_BATCH:
        raise ValueError(f"{name}: {size} items, more than the {MAX_BATCH} one generation takes")
    return size


def validate_sample_rate(rate: object, name: str = "audio") -> int:
    """An input sample rate: an integer number of Hz within :data:`SAMPLE_RATE_RANGE`."""
    low, high = SAMPLE_RATE_RANGE
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
        raise ValueError(f"{name}: sample rate must be a positive integer, got {rate!r}")
    if not low <= rate <= high:
        raise ValueError(f"{name}: sample rate {rate} Hz is outside {low}..{high} Hz; is the file's header right?")
    return int(rate)


def per_item(value: T | Sequence[T], batch_size: int, name: str) -> list[T]:
    """A scalar broadcast to ``batch_size`` items, or a list/tuple that must have exactly that length."""
    if isinstance(value, (list, tuple)):
        if len(value) != batch_size:
            raise ValueError(f"{name} has {len(value)} values but batch_size is {batch_size}")
        return list(value)
    return [value] * batch_size  # type: ignore[list-item]


def validate_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def validate_init_noise_level(level: float) -> None:
    """``init_noise_level`` (sigma_max for audio-to-audio) must lie in (0, 1]."""
    if not (isinstance(level, (int, float)) and math.isfinite(level) and 0 < level <= 1):
        raise ValueError(f"init_noise_level must be in (0, 1], got {level!r}")


def validate_durations(durations: Sequence[float], max_seconds: float) -> None:
    """Every duration must be a finite number of seconds in (0, max_seconds]."""
    for i, d in enumerate(durations):
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
            raise ValueError(f"duration[{i}] must be a finite number of seconds, got {d!r}")
        if d <= 0:
            raise ValueError(f"duration[{i}] must be positive, got {d} s")
        if d > max_seconds:
            raise ValueError(f"duration[{i}] = {d} s is above this model's maximum of {max_seconds:.2f} s")


def validate_regions(regions: Sequence[Region], duration: float, name: str = "inpaint region") -> None:
    """Each ``(start, end)`` needs ``0 <= start < end`` and ``start < duration``.

    An end past the duration is allowed (it is clipped; audio past the duration is generated anyway).
    """
    for i, region in enumerate(regions):
        if not _is_region(region):
            raise ValueError(f"{name} {i}: expected (start_seconds, end_seconds), got {region!r}")
        start, end = region
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{name} {i}: bounds must be finite, got {region!r}")
        if start < 0:
            raise ValueError(f"{name} {i}: start {start} s is negative")
        if end <= start:
            raise ValueError(f"{name} {i}: end {end} s must be after start {start} s")
        if start >= duration:
            raise ValueError(f"{name} {i}: starts at {start} s, at or after the end of the {duration} s output")


def validate_audio(audio: torch.Tensor, name: str = "audio") -> None:
    """Input audio must hold samples and only finite values."""
    if audio.numel() == 0 or audio.shape[-1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(audio.shape)})")
    if not torch.isfinite(audio).all():
        raise ValueError(f"{name} contains NaN or infinite samples")


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------


def zero_padding(audio: torch.Tensor, padding_mask: torch.Tensor, downsampling_ratio: int) -> torch.Tensor:
    """Zero decoded audio (B, C, T) past each item's valid latents (padded positions decode to garbage).

    The (B, L) mask is repeated ``ds`` times per latent, then cut or extended with False to T (official).
    """
    per_sample = padding_mask.repeat_interleave(downsampling_ratio, dim=-1)[:, None]
    length = audio.shape[-1]
    if per_sample.shape[-1] >= length:
        per_sample = per_sample[..., :length]
    else:
        per_sample = F.pad(per_sample, (0, length - per_sample.shape[-1]), value=False)
    return audio * per_sample.to(audio.dtype)


PeakPolicy = Literal["clamp", "limit", "attenuate", "none"]
PEAK_POLICIES: tuple[str, ...] = ("clamp", "limit", "attenuate", "none")


def apply_peak_policy(audio: torch.Tensor, policy: PeakPolicy = "clamp") -> torch.Tensor:
    """Float32 audio with peaks handled.

    ``"clamp"``: hard clip to [-1, 1] (official output). ``"limit"`` / ``"attenuate"`` (same thing): divide
    each item by its peak when that peak exceeds 1, so nothing clips and quieter items are untouched.
    ``"none"``: unchanged.
    """
    audio = audio.float()
    if policy == "clamp":
        return audio.clamp(-1, 1)
    if policy in ("limit", "attenuate"):
        peak = audio.abs().amax(dim=tuple(range(1, audio.ndim)), keepdim=True)
        return audio / peak.clamp(min=1.0)
    if policy == "none":
        return audio
    raise ValueError(f"unknown peak policy {policy!r} (expected one of {', '.join(PEAK_POLICIES)})")


def duration_samples(durations: Sequence[float], sample_rate: int) -> list[int]:
    """Samples of each requested duration: ``int(d * sr)`` (official truncation length)."""
    return [int(d * sample_rate) for d in durations]


def trim_to_durations(audio: torch.Tensor, durations: Sequence[float], sample_rate: int) -> list[torch.Tensor]:
    """Each item (C, T) cut to its own ``int(d * sr)`` samples; returns a list (lengths may differ)."""
    if len(durations) != audio.shape[0]:
        raise ValueError(f"{len(durations)} durations for a batch of {audio.shape[0]}")
    return [item[..., :n] for item, n in zip(audio, duration_samples(durations, sample_rate))]


def trim_padded(audio: torch.Tensor, durations: Sequence[float], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One tensor for a batch of different durations: cut to the longest ``int(d * sr)`` and zero each
    item past its own end. Returns ``(audio (B, C, max_len), lengths (B,) int64)``. With equal durations
    this is exactly the official truncation (the official code skips trimming when they differ).
    """
    lengths = duration_samples(durations, sample_rate)
    if len(lengths) != audio.shape[0]:
        raise ValueError(f"{len(lengths)} durations for a batch of {audio.shape[0]}")
    longest = min(max(lengths), audio.shape[-1])
    out = audio[..., :longest].clone()
    for b, n in enumerate(lengths):
        out[b, ..., n:] = 0
    return out, torch.tensor([min(n, longest) for n in lengths], dtype=torch.long)
