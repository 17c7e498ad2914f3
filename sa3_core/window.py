"""The latent window a batch is generated in: seconds -> samples -> latents, and the padding mask.

All pure functions, and :class:`Window`, the result the pipeline's stages share. Formulas follow the official
``StableAudioModel.generate`` (``model.py``) and ``data/utils.py`` at 636f906 (``_adapt_sample_size``;
tests/core/test_masks.py has worked examples).

Vocabulary (SA3 numbers in brackets):

* sample rate ``sr`` [44100], ``downsampling_ratio`` ``ds`` = samples per latent [4096];
* the *window*: the audio the model generates, ``audio_sample_size`` samples = ``L`` latents, longer than
  the request by ``padding_sec`` [6 s] and rounded up;
* an item's *effective length*: the latents its own duration covers, ``ceil(int(s * sr) / ds)``;
* *valid* latents: effective length plus a headroom of ``int(padding_sec * sr / ds)`` [64] latents, capped at
  ``L``. The DiT only attends to valid latents (padding mask) and decoded audio past them is zeroed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
    return torch.tensor(
        [effective_length(s, sample_rate, downsampling_ratio) for s in seconds], dtype=torch.long, device=device
    )


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


def duration_samples(durations: Sequence[float], sample_rate: int) -> list[int]:
    """Samples of each requested duration: ``int(d * sr)`` (official truncation length)."""
    return [int(d * sample_rate) for d in durations]


@dataclass(frozen=True)
class Window:
    """The latent window a batch is generated in.

    ``durations`` are the items' requested seconds (the ``seconds_total`` conditioning), ``audio_samples``
    the window in samples (longest duration + padding, aligned, capped), ``latents`` its length L.
    """

    durations: tuple[float, ...]
    audio_samples: int
    latents: int
    padding_sec: float
    sample_rate: int
    downsampling_ratio: int

    @property
    def batch_size(self) -> int:
        return len(self.durations)

    def padding_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L) bool, True on each item's valid latents (its duration + the padding headroom)."""
        return padding_mask(
            self.durations, self.latents, self.padding_sec, self.sample_rate, self.downsampling_ratio, device
        )

    def effective_lengths(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(B,) latents each item's duration covers: the schedule's sequence lengths."""
        return effective_lengths(self.durations, self.sample_rate, self.downsampling_ratio, device)

    def output_samples(self) -> list[int]:
        """Samples of each item after trimming: ``int(duration * sr)``."""
        return duration_samples(self.durations, self.sample_rate)
