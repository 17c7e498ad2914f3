"""Audio inputs in the form SA3 takes them (the official ``prepare_audio`` and the SAME preprocessing).

A clip is one (channels, samples) tensor and its sample rate. It is resampled to the model's rate with
torchaudio (the official ``T.Resample`` defaults), zero-padded or cut to a length, and fitted to the model's
channels: mono duplicated to stereo, extra channels dropped.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torchaudio.functional as AF

from .masks import validate_audio


def _is_rate(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def rate_and_samples(audio: object, name: str = "audio") -> tuple[int, object]:
    """``(sample_rate, samples)``, or ``(samples, sample_rate)`` as ``torchaudio.load`` returns it (the official
    docs pass that), -> ``(sample_rate, samples)``. The order is unambiguous: the rate is the int."""
    if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
        raise ValueError(f"{name} must be a (sample_rate, tensor) or (tensor, sample_rate) pair")
    first, second = audio
    sample_rate, samples = (second, first) if _is_rate(second) and not _is_rate(first) else (first, second)
    check_rate(sample_rate, name)
    return sample_rate, samples


def check_rate(sample_rate: object, name: str = "audio") -> None:
    if not _is_rate(sample_rate) or sample_rate <= 0:
        raise ValueError(f"{name}: sample rate must be a positive integer, got {sample_rate!r}")


def channels_first(samples: object, name: str = "audio") -> torch.Tensor:
    """(samples,), (channels, samples) or (1, channels, samples) -> (channels, samples), checked non-empty
    and finite."""
    samples = torch.as_tensor(samples)
    if samples.ndim == 3 and samples.shape[0] == 1:
        samples = samples[0]
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2:
        raise ValueError(f"{name}: expected (samples,), (channels, samples) or (1, channels, samples), "
                         f"got shape {tuple(samples.shape)}")
    validate_audio(samples, name)
    return samples


def resample(samples: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    return samples if from_rate == to_rate else AF.resample(samples, from_rate, to_rate)


def fit(samples: torch.Tensor, length: int, channels: int) -> torch.Tensor:
    """(C, T) -> (channels, length): zero-padded or cut at the end, mono duplicated to stereo, extra channels
    dropped."""
    fitted = samples.new_zeros(samples.shape[0], length)
    kept = min(samples.shape[-1], length)
    fitted[:, :kept] = samples[:, :kept]
    if fitted.shape[0] == 1 and channels == 2:
        fitted = fitted.repeat(2, 1)
    return fitted[:channels]


def encoder_batch(clips: Sequence[object], rates: int | Sequence[int], sample_rate: int, multiple: int,
                  channels: int) -> torch.Tensor:
    """The official ``preprocess_audio_list_for_encoder``: clips of any length, rate and channel count ->
    one (B, channels, T) batch at ``sample_rate``, every clip zero-padded to the longest, T rounded up to a
    multiple of ``multiple`` (the samples per latent). ``rates``: one per clip, or one for all."""
    if isinstance(clips, torch.Tensor) or not clips:
        raise ValueError("expected a non-empty list of (channels, samples) clips")
    rates = [rates] * len(clips) if _is_rate(rates) else list(rates)
    if len(rates) != len(clips):
        raise ValueError(f"{len(rates)} sample rates for {len(clips)} clips")
    resampled = []
    for i, (clip, rate) in enumerate(zip(clips, rates)):
        check_rate(rate, f"clip {i}")
        resampled.append(resample(channels_first(clip, f"clip {i}"), rate, sample_rate))
    longest = max(c.shape[-1] for c in resampled)
    length = -(-longest // multiple) * multiple
    return torch.stack([fit(c, length, channels) for c in resampled])
