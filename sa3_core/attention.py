"""Scaled dot-product attention kernels, chosen at run time.

Every kernel takes ``q, k, v`` shaped ``(B, H, N, D)`` and returns ``(B, H, Nq, D)`` with softmax scale
``1/sqrt(D)``. Two optional modifiers exist:

* ``key_padding_mask`` ``(B, Nk)`` bool, True = valid token.
* ``window``: an int ``w`` or a pair ``(left, right)``; query ``i`` may attend key ``j`` only when
  ``i - left <= j <= i + right`` (inclusive on both sides, exactly flash-attn's ``window_size``).

Backends and the official behaviour each one reproduces (official code at 636f906, ``apply_attn``):

``"sdpa"``
    ``torch.nn.functional.scaled_dot_product_attention``. A padding mask is applied by *V-zeroing*
    (``v[:, :, pad] = 0``): padded keys stay in the softmax denominator but contribute nothing to the
    numerator. This is the official path whenever flash-attn is not installed (CPU, MPS) and it is the
    path that produced the golden fixtures. A window is applied as an explicit dense ``N x N`` band mask
    (the official last-resort fallback): exact but O(N^2) memory, meant as a reference for short inputs.

``"band"``
    Exact sliding-window attention without flash-attn and without an ``N x N`` mask: queries are cut into
    blocks, each block attends only to its own and neighbouring key blocks with a small local mask, so
    memory is O(N * window). Same numbers as the official chunked-halo / flex fallbacks (all are exact
    band attention). Padding uses V-zeroing, like ``"sdpa"``. Without a window it falls back to ``"sdpa"``.

``"flash"``
    flash-attn on CUDA. With a padding mask it packs the valid tokens and calls
    ``flash_attn_varlen_func`` (the official CUDA semantics: padded keys are excluded from the softmax and
    padded *query* rows come back as 0; this needs ``Nq == Nk``), otherwise ``flash_attn_func``.
    ``window`` maps to ``window_size``. As in the official code, fp32 inputs are run in fp16 and cast back.
    flash-attn is not installed in our CI, so this path is written against its documented API but is NOT
    exercised by the test suite.

``"auto"``
    ``"flash"`` when flash-attn is importable and the tensors are on CUDA, else ``"band"`` for windowed
    attention, else ``"sdpa"``.

Note that ``"flash"`` and the other backends give *different* results for padded inputs (varlen
exclusion vs V-zeroing): zeroed padded values still count in the softmax denominator, so valid positions
of the DiT differ slightly too (the decoded audio within the requested duration stays close).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["auto", "sdpa", "band", "flash"]
Window = int | tuple[int, int] | None

BACKENDS: tuple[str, ...] = ("auto", "sdpa", "band", "flash")

try:  # flash-attn is optional; nothing here may fail when it is missing.
    from flash_attn import flash_attn_func as _flash_attn_func
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    _flash_attn_func = None
    _flash_attn_varlen_func = None


def flash_available() -> bool:
    """True when flash-attn (dense and varlen kernels) can be imported."""
    return _flash_attn_func is not None and _flash_attn_varlen_func is not None


def _window_pair(window: Window) -> tuple[int, int] | None:
    if window is None:
        return None
    left, right = (window, window) if isinstance(window, int) else window
    if left < 0 or right < 0:
        raise ValueError(f"attention window must be non-negative, got {window!r}")
    return int(left), int(right)


def resolve_backend(backend: str, device: torch.device, windowed: bool) -> str:
    """The concrete backend ("sdpa", "band" or "flash") that ``backend`` means for this call."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "auto":
        if flash_available() and device.type == "cuda":
            return "flash"
        return "band" if windowed else "sdpa"
    if backend == "flash" and not flash_available():
        raise RuntimeError("attention backend 'flash' requested but flash-attn is not installed")
    if backend == "band" and not windowed:
        return "sdpa"
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    window: Window = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-head attention on ``(B, H, N, D)`` tensors; see the module docstring for the backends.

    Args:
        q: queries ``(B, H, Nq, D)``.
        k, v: keys and values ``(B, H, Nk, D)``.
        key_padding_mask: ``(B, Nk)`` bool, True = valid; None means every token is valid.
        window: sliding window ``w`` or ``(left, right)``, inclusive; None = full attention.
        backend: "auto", "sdpa", "band" or "flash".

    Returns:
        ``(B, H, Nq, D)`` in the dtype of ``q``.
    """
    pair = _window_pair(window)
    chosen = resolve_backend(backend, q.device, pair is not None)
    if chosen == "flash":
        return _flash_attention(q, k, v, key_padding_mask, pair)
    if key_padding_mask is not None:
        v = zero_padded_values(v, key_padding_mask)
    if pair is None:
        return F.scaled_dot_product_attention(q, k, v)
    if chosen == "band":
        return band_attention(q, k, v, pair)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense_band_mask(q.shape[-2], k.shape[-2], pair, q.device))


def zero_padded_values(v: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Official no-flash padding: zero the values of padded keys (they still count in the softmax)."""
    return v * key_padding_mask[:, None, :, None].to(v.dtype)


def dense_band_mask(n_q: int, n_k: int, window: Window, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(n_q, n_k)`` mask, True where ``i - left <= j <= i + right``. O(N^2): for references only."""
    left, right = _window_pair(window)  # type: ignore[misc]
    delta = torch.arange(n_k, device=device)[None, :] - torch.arange(n_q, device=device)[:, None]
    return (delta >= -left) & (delta <= right)


_BAND_GROUP_TOKENS = 4096


def _key_strips(t: torch.Tensor, k_lo: int, k_hi: int, span: int, size: int) -> torch.Tensor:
    """Overlapping key strips of positions ``k_lo:k_hi`` (zero-padded where they leave the sequence), one per
    query block of ``size``: (B, H, blocks, span, D), a view of the padded slice."""
    n = t.shape[2]
    piece = F.pad(t[:, :, max(k_lo, 0) : min(k_hi, n)], (0, 0, max(0, -k_lo), k_hi - min(k_hi, n)))
    return piece.unfold(2, span, size).transpose(-1, -2)


def band_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Window,
    block_size: int | None = None,
) -> torch.Tensor:
    """Exact sliding-window self-attention in O(N * window) memory.

    Queries are cut into blocks of ``block_size`` tokens (default ``max(left, right, 8)``). Block ``b``
    covers query positions ``[b*S, (b+1)*S)``; with ``nl = ceil(left/S)`` and ``nr = ceil(right/S)`` every
    key it may see lies in key blocks ``b-nl .. b+nr``, so each block attends to that strip of
    ``(nl+1+nr)*S`` keys through a small local mask. Keys outside ``[0, N)`` (edge padding) are masked;
    the zero-padded query tail is computed against itself and dropped.

    Args:
        q, k, v: ``(B, H, N, D)``, same N for queries and keys (self-attention).
        window: ``w`` or ``(left, right)``, inclusive.
        block_size: query block length; any positive value gives the same result.
    """
    left, right = _window_pair(window)  # type: ignore[misc]
    batch, heads, n, dim = q.shape
    if k.shape[-2] != n:
        raise ValueError("band attention is self-attention: queries and keys must have the same length")
    size = block_size or max(left, right, 8)
    blocks_left = math.ceil(left / size)
    blocks_right = math.ceil(right / size)
    n_blocks = math.ceil(n / size)
    span = (blocks_left + 1 + blocks_right) * size

    # Position bookkeeping: query a of block b sits at b*S + a, key c of its strip at (b - nl)*S + c.
    device = q.device
    query_offset = torch.arange(size, device=device)
    key_offset = torch.arange(span, device=device) - blocks_left * size
    delta = key_offset[None, :] - query_offset[:, None]  # key - query, the same for every block
    in_band = (delta >= -left) & (delta <= right)  # (S, span)
    block_start = torch.arange(n_blocks, device=device)[:, None] * size
    key_pos = block_start + key_offset[None, :]  # (n_blocks, span)
    key_valid = (key_pos >= 0) & (key_pos < n)
    query_tail = (block_start + query_offset[None, :]) >= n  # (n_blocks, S): padded query rows
    # Padded query rows keep their (zero) in-band keys so that no softmax row is empty; they are dropped.
    mask = in_band[None] & (key_valid[:, None, :] | query_tail[:, :, None])  # (n_blocks, S, span)

    # Work through ~_BAND_GROUP_TOKENS queries at a time so that the zero-padded copies, the key strips
    # and the scores stay small; only the output is sequence-sized.
    out = q.new_empty(q.shape)
    group = max(1, _BAND_GROUP_TOKENS // size)
    for first in range(0, n_blocks, group):
        last = min(first + group, n_blocks)
        q_lo, q_hi = first * size, min(last * size, n)
        q_part = F.pad(q[:, :, q_lo:q_hi], (0, 0, 0, (last - first) * size - (q_hi - q_lo)))
        q_part = q_part.view(batch, heads, last - first, size, dim)
        k_lo, k_hi = (first - blocks_left) * size, (last + blocks_right) * size
        keys, values = (_key_strips(t, k_lo, k_hi, span, size) for t in (k, v))
        attended = F.scaled_dot_product_attention(q_part, keys, values, attn_mask=mask[first:last])
        out[:, :, q_lo:q_hi] = attended.reshape(batch, heads, -1, dim)[:, :, : q_hi - q_lo]
    return out


def _flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    window: tuple[int, int] | None,
) -> torch.Tensor:
    """flash-attn path (official CUDA semantics). Untested here: flash-attn is not installed in CI."""
    window_size = window if window is not None else (-1, -1)
    in_dtype = q.dtype
    # flash-attn only runs fp16/bf16; the official code runs fp32 models' attention in fp16 too.
    run_dtype = in_dtype if in_dtype in (torch.float16, torch.bfloat16) else torch.float16
    q, k, v = (t.transpose(1, 2).to(run_dtype) for t in (q, k, v))  # (B, N, H, D)

    if key_padding_mask is None:
        out = _flash_attn_func(q, k, v, causal=False, window_size=window_size)
        return out.to(in_dtype).transpose(1, 2)

    batch, n, heads, dim = q.shape
    if k.shape[1] != n:
        raise ValueError("flash varlen padding needs queries and keys of the same length (self-attention)")
    # Pack the valid tokens of every item into one sequence; padded query rows come back as zeros.
    flat_mask = key_padding_mask.reshape(-1)
    indices = torch.nonzero(flat_mask, as_tuple=False).flatten()
    seqlens = key_padding_mask.sum(dim=-1, dtype=torch.int32)
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    max_seqlen = int(seqlens.max().item())
    packed = [t.reshape(batch * n, heads, dim).index_select(0, indices) for t in (q, k, v)]
    out_packed = _flash_attn_varlen_func(
        *packed, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=False, window_size=window_size
    )
    out = torch.zeros(batch * n, heads, dim, device=q.device, dtype=out_packed.dtype)
    out.index_copy_(0, indices, out_packed)
    return out.view(batch, n, heads, dim).to(in_dtype).transpose(1, 2)
