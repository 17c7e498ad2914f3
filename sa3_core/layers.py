"""Building blocks shared by the SA3 diffusion transformer and the SAME autoencoder.

Module and parameter names follow the official checkpoints, so ``state_dict()`` keys line up with them:
norms keep ``gamma`` (and ``alpha``/``beta`` for DyT), the feed-forward keeps ``ff.0.proj`` / ``ff.2``,
attention keeps ``to_qkv`` or ``to_q``/``to_kv``, ``to_out``, ``q_norm``, ``k_norm``.

Linear layers come from an injected ``operations`` namespace (:data:`sa3_core.ops.OPS` by default, ComfyUI
passes ``comfy.ops.*``). Every other parameter lives in a leaf module marked :class:`~sa3_core.ops.CastWeights`
and is cast to the input's device and dtype at use, as ComfyUI's manual-cast layers do, so ComfyUI can load
a model partially (see :mod:`sa3_core.ops`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Window, attention
from .ops import OPS, CastWeights, Operations, cast_param


class RMSNorm(nn.Module, CastWeights):
    """RMS normalisation over the last dim with a learned scale ``gamma`` (no bias).

    ``force_fp32=True`` normalises in float32 and casts back (the DiT's block norms, eps 1e-5);
    the per-head q/k norms use eps 1e-6 in the input dtype.
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, force_fp32: bool = False, device=None, dtype=None):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps
        self.force_fp32 = force_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.force_fp32:
            out = F.rms_norm(
                x.float(), x.shape[-1:], weight=cast_param(self, "gamma", x, dtype=torch.float32), eps=self.eps
            )
            return out.to(x.dtype)
        return F.rms_norm(x, x.shape[-1:], weight=cast_param(self, "gamma", x), eps=self.eps)


class DyT(nn.Module, CastWeights):
    """Dynamic tanh, ``gamma * tanh(alpha * x) + beta`` with a learned scalar ``alpha`` (SAME's norm)."""

    def __init__(self, dim: int, *, init_alpha: float = 4.0, device=None, dtype=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), init_alpha, device=device, dtype=dtype))
        self.gamma = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast_param(self, "gamma", x) * torch.tanh(cast_param(self, "alpha", x) * x) + cast_param(self, "beta", x)


class ExpoFourierFeatures(nn.Module):
    """``[cos(2 pi t f_k), sin(2 pi t f_k)]`` with ``f_k`` log-spaced in ``[min_freq, max_freq]``.

    Input ``(B,)`` or ``(B, 1)``; output ``(B, dim)`` in the input dtype, computed in float32.
    No parameters (the DiT's ``timestep_features`` and the seconds conditioner both use it).
    """

    def __init__(self, dim: int, min_freq: float = 0.5, max_freq: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.min_freq = min_freq
        self.max_freq = max_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        in_dtype = t.dtype
        t = t.float()
        if t.dim() == 1:
            t = t.unsqueeze(-1)
        ramp = torch.linspace(0, 1, self.dim // 2, device=t.device, dtype=torch.float32)
        log_min, log_max = math.log(self.min_freq), math.log(self.max_freq)
        freqs = torch.exp(ramp * (log_max - log_min) + log_min)
        # Same multiplication order as the official code, so float32 results agree bit for bit.
        args = t * freqs * 2 * math.pi
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(in_dtype)


class RotaryEmbedding(nn.Module, CastWeights):
    """Rotary position table over ``dim`` channels (32 = the first half of a 64-dim head).

    ``inv_freq`` is a *persistent* buffer: the official checkpoints store it, and it is cast with the model
    (fp16 rounds it), so it is loaded, not recomputed. It is initialised to ``base^(-2j/dim)`` so that a
    model built without a checkpoint still works. Marked :class:`CastWeights` so that ComfyUI moves the
    buffer with a partial load too (it only moves listed modules; this one has no parameters).
    """

    def __init__(self, dim: int = 32, *, base: float = 10000.0, device=None, dtype=None):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device).float() / dim))
        self.register_buffer("inv_freq", inv_freq.to(dtype) if dtype is not None else inv_freq)

    def forward(self, seq_len: int, device: torch.device | None = None) -> torch.Tensor:
        """Angles ``(seq_len, dim)`` in float32 for positions ``0 .. seq_len-1``, as ``cat(theta, theta)``."""
        inv_freq = self.inv_freq.to(device=device or self.inv_freq.device, dtype=torch.float32)
        positions = torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32)
        angles = positions[:, None] * inv_freq[None, :]
        return torch.cat([angles, angles], dim=-1)


RotaryTables = tuple[torch.Tensor, torch.Tensor]
"""``(cos, sin)`` of the RoPE angles, each ``(N, R)`` float32 (see :func:`rotary_tables`)."""


def rotary_tables(freqs: torch.Tensor | RotaryTables) -> RotaryTables:
    """``(cos, sin)`` of the angles from :class:`RotaryEmbedding`. Computing them once per forward and
    handing the pair to every layer saves two transcendental passes per query/key tensor per layer;
    the values are the same as computing them inside :func:`apply_rotary`."""
    if isinstance(freqs, tuple):
        return freqs
    freqs = freqs.float()
    return freqs.cos(), freqs.sin()


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor | RotaryTables) -> torch.Tensor:
    """Rotate the first ``R`` channels of ``x`` (``(..., N, D)``) NeoX style, in float32.

    ``freqs`` is the ``(N, R)`` angle table from :class:`RotaryEmbedding` or its ``(cos, sin)`` from
    :func:`rotary_tables`; the last ``N`` rows are used (as the official code does). Returns float32;
    callers cast back to their working dtype.
    """
    x = x.float()
    cos, sin = rotary_tables(freqs)
    rot_dim = cos.shape[-1]
    cos, sin = cos[-x.shape[-2] :], sin[-x.shape[-2] :]
    rotated, passthrough = x[..., :rot_dim], x[..., rot_dim:]
    first, second = rotated.chunk(2, dim=-1)
    half_turned = torch.cat([-second, first], dim=-1)
    rotated = rotated * cos + half_turned * sin
    return torch.cat([rotated, passthrough], dim=-1)


class _GatedLinear(nn.Module):
    """``proj`` to twice the width, then ``value * act(gate)`` (SwiGLU, or the sin(pi x) gate)."""

    def __init__(self, dim_in: int, dim_out: int, *, sinusoidal: bool, operations: Operations, device, dtype):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, device=device, dtype=dtype)
        self.sinusoidal = sinusoidal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        gate = torch.sin(math.pi * gate) if self.sinusoidal else F.silu(gate)
        return value * gate


class FeedForward(nn.Module):
    """Gated feed-forward ``dim -> mult*dim -> dim`` with biases.

    The gate is SiLU (SwiGLU) or, with ``sinusoidal=True``, ``sin(pi x)`` (SAME-L's last decoder blocks).
    Keys: ``ff.0.proj.{weight,bias}`` (``[2*mult*dim, dim]``) and ``ff.2.{weight,bias}``.
    """

    def __init__(
        self,
        dim: int,
        mult: int = 4,
        *,
        sinusoidal: bool = False,
        operations: Operations = OPS,
        device=None,
        dtype=None,
    ):
        super().__init__()
        inner = int(dim * mult)
        # Index 1 is an empty slot in the official Sequential; keep it so index 2 lines up.
        self.ff = nn.Sequential(
            _GatedLinear(dim, inner, sinusoidal=sinusoidal, operations=operations, device=device, dtype=dtype),
            nn.Identity(),
            operations.Linear(inner, dim, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class Attention(nn.Module):
    """Multi-head self- or cross-attention with per-head q/k norm, optional RoPE and differential heads.

    Self-attention (``context_dim=None``) projects with ``to_qkv``: chunks ``q, k, v`` or, differential,
    ``q, k, v, q_diff, k_diff``. Cross-attention projects ``to_q(x)`` (``q`` or ``q, q_diff``) and
    ``to_kv(context)`` (``k, v`` or ``k, k_diff, v``). All projections are bias-free.

    Per-head ``q_norm`` / ``k_norm`` ("rms": RMSNorm with ``qk_norm_eps``; "dyt": DyT) are shared by both
    differential branches and applied before RoPE. RoPE (``rotary_freqs`` from :class:`RotaryEmbedding`)
    rotates the first channels of every head in float32. Differential output is
    ``attn(q, k, v) - attn(q_diff, k_diff, v)`` (no lambda, no extra norm), then ``to_out``.

    The kernel is picked by ``self.backend`` (see :mod:`sa3_core.attention`); set the attribute to change it.
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_heads: int = 64,
        context_dim: int | None = None,
        differential: bool = False,
        qk_norm: Literal["rms", "dyt"] = "rms",
        qk_norm_eps: float = 1e-6,
        backend: str = "auto",
        operations: Operations = OPS,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dim % dim_heads:
            raise ValueError(f"attention width {dim} is not a multiple of the head size {dim_heads}")
        self.num_heads = dim // dim_heads
        self.dim_heads = dim_heads
        self.differential = differential
        self.is_cross = context_dim is not None
        self.backend = backend
        branches = 2 if differential else 1
        if self.is_cross:
            self.to_q = operations.Linear(dim, dim * branches, bias=False, device=device, dtype=dtype)
            self.to_kv = operations.Linear(
                context_dim, context_dim * (branches + 1), bias=False, device=device, dtype=dtype
            )
        else:
            self.to_qkv = operations.Linear(dim, dim * (3 + 2 * (branches - 1)), bias=False, device=device, dtype=dtype)
        self.to_out = operations.Linear(dim, dim, bias=False, device=device, dtype=dtype)
        if qk_norm == "rms":
            self.q_norm = RMSNorm(dim_heads, eps=qk_norm_eps, device=device, dtype=dtype)
            self.k_norm = RMSNorm(dim_heads, eps=qk_norm_eps, device=device, dtype=dtype)
        elif qk_norm == "dyt":
            self.q_norm = DyT(dim_heads, device=device, dtype=dtype)
            self.k_norm = DyT(dim_heads, device=device, dtype=dtype)
        else:
            raise ValueError(f"unsupported qk_norm {qk_norm!r} (SA3 uses 'rms' or 'dyt')")

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, n, _ = t.shape
        return t.view(batch, n, -1, self.dim_heads).transpose(1, 2)  # (B, H, N, D)

    def _self_project(self, x: torch.Tensor) -> tuple[list, list, torch.Tensor]:
        """Self-attention queries and keys per branch (one, or two when differential) and the values."""
        if self.differential:
            q, k, values, q_diff, k_diff = self.to_qkv(x).chunk(5, dim=-1)
            queries, keys = [q, q_diff], [k, k_diff]
        else:
            q, k, values = self.to_qkv(x).chunk(3, dim=-1)
            queries, keys = [q], [k]
        return [self._heads(q) for q in queries], [self._heads(k) for k in keys], self._heads(values)

    def context_keys_values(self, context: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Cross-attention keys (k-normed, one per branch) and values ``(B, H, M, D)`` for ``context``.

        They depend on the context and the weights only, so a caller that attends to the same context
        many times (every sampling step) can compute them once and pass them as ``context_kv``.
        """
        if not self.is_cross:
            raise ValueError("context keys and values exist only for cross-attention")
        kv = self.to_kv(context).chunk(3 if self.differential else 2, dim=-1)
        keys = [self._heads(k) for k in kv[:-1]]
        return [self.k_norm(k).to(k.dtype) for k in keys], self._heads(kv[-1])

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        rotary_freqs: torch.Tensor | RotaryTables | None = None,
        key_padding_mask: torch.Tensor | None = None,
        window: Window = None,
        context_kv: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend ``x`` ``(B, N, dim)`` to itself or to ``context`` ``(B, M, context_dim)``.

        Args:
            rotary_freqs: RoPE angles ``(N, R)`` or their ``(cos, sin)`` for self-attention, or None.
            key_padding_mask: ``(B, N)`` bool, True = valid (self-attention); semantics per backend.
            window: sliding window (``w`` or ``(left, right)``, inclusive) or None.
            context_kv: cross-attention only: :meth:`context_keys_values` of the context, used instead
                of ``context`` (same result, without projecting the context again).
        Returns ``(B, N, dim)``.
        """
        if self.is_cross:
            if context_kv is None:
                if context is None:
                    raise ValueError("cross-attention needs a context")
                context_kv = self.context_keys_values(context)
            keys, v = context_kv
            queries = [self._heads(q) for q in self.to_q(x).chunk(2 if self.differential else 1, dim=-1)]
        else:
            queries, keys, v = self._self_project(x)
            keys = [self.k_norm(k).to(k.dtype) for k in keys]
        queries = [self.q_norm(q).to(q.dtype) for q in queries]
        if rotary_freqs is not None:
            tables = rotary_tables(rotary_freqs)
            queries = [apply_rotary(q, tables).to(v.dtype) for q in queries]
            keys = [apply_rotary(k, tables).to(v.dtype) for k in keys]
        out = None
        for q, k in zip(queries, keys):
            branch = attention(q, k, v, key_padding_mask=key_padding_mask, window=window, backend=self.backend)
            out = branch if out is None else out - branch
        batch, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(batch, n, -1))
