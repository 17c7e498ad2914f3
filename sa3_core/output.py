"""Decoded audio -> the output: silence past each item's valid latents, the peak policy, the trim to durations.

All pure functions; the Python API (``StableAudioModel.decode_latents`` / ``generate``) and the ComfyUI decode
node both use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .window import duration_samples


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


PeakPolicy = Literal["clamp", "limit", "none"]
PEAK_POLICIES: tuple[str, ...] = ("clamp", "limit", "none")


def validate_peak_policy(policy: object) -> str:
    """One of :data:`PEAK_POLICIES` (checked before any work, as every other setting of a request)."""
    if policy not in PEAK_POLICIES:
        raise ValueError(f"unknown peak policy {policy!r} (expected one of {', '.join(PEAK_POLICIES)})")
    return policy  # type: ignore[return-value]


def apply_peak_policy(audio: torch.Tensor, policy: PeakPolicy = "clamp") -> torch.Tensor:
    """Float32 audio with peaks handled.

    ``"clamp"``: hard clip to [-1, 1] (official output). ``"limit"``: divide each item by its peak when that
    peak exceeds 1, so nothing clips and quieter items are untouched. ``"none"``: unchanged.
    """
    validate_peak_policy(policy)
    audio = audio.float()
    if policy == "clamp":
        return audio.clamp(-1, 1)
    if policy == "limit":
        peak = audio.abs().amax(dim=tuple(range(1, audio.ndim)), keepdim=True)
        return audio / peak.clamp(min=1.0)
    return audio


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
