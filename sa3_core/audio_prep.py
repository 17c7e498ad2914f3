"""Audio inputs in the form SA3 takes them (the official ``prepare_audio`` and the SAME preprocessing).

A clip is one (channels, samples) tensor and its sample rate. It is fitted to the model's channels (mono
duplicated to stereo, the first two channels of a multichannel clip kept, everything averaged for a mono
model), resampled to the model's rate with torchaudio's interpolation (:mod:`sa3_core.resample`, whose cost
is bounded for any pair of rates) and zero-padded or cut to a length.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .resample import input_samples_needed, resample
from .validation import validate_audio, validate_sample_rate

logger = logging.getLogger(__name__)


def _is_rate(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def rate_and_samples(audio: object, name: str = "audio") -> tuple[int, object]:
    """``(sample_rate, samples)``, or ``(samples, sample_rate)`` as ``torchaudio.load`` returns it (the official
    docs pass that), -> ``(sample_rate, samples)``. The order is unambiguous: the rate is the int."""
    if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
        raise ValueError(f"{name} must be a (sample_rate, tensor) or (tensor, sample_rate) pair")
    first, second = audio
    sample_rate, samples = (second, first) if _is_rate(second) and not _is_rate(first) else (first, second)
    return validate_sample_rate(sample_rate, name), samples


def channels_first(samples: object, name: str = "audio") -> torch.Tensor:
    """(samples,), (channels, samples) or (1, channels, samples) -> (channels, samples), checked non-empty
    and finite."""
    samples = torch.as_tensor(samples)
    if samples.ndim == 3 and samples.shape[0] == 1:
        samples = samples[0]
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2:
        raise ValueError(
            f"{name}: expected (samples,), (channels, samples) or (1, channels, samples), "
            f"got shape {tuple(samples.shape)}"
        )
    validate_audio(samples, name)
    return samples


def model_channels(samples: torch.Tensor, channels: int, name: str = "audio") -> torch.Tensor:
    """(C, T) -> (channels, T), the official way (``set_audio_channels``): a mono model averages every
    channel, mono is duplicated, a multichannel clip keeps its first channels (front left and right in
    WAV/FLAC order; a warning says so)."""
    if channels == 1:
        return samples.mean(0, keepdim=True)
    if samples.shape[0] == 1:
        return samples.repeat(channels, 1)
    if samples.shape[0] > channels:
        logger.warning(
            "%s has %d channels; using the first %d (front left and right), as the official code does",
            name,
            samples.shape[0],
            channels,
        )
    return samples[:channels]


def fit_length(samples: torch.Tensor, length: int) -> torch.Tensor:
    """(C, T) -> (C, length): zero-padded or cut at the end."""
    fitted = samples.new_zeros(samples.shape[0], length)
    kept = min(samples.shape[-1], length)
    fitted[:, :kept] = samples[:, :kept]
    return fitted


def prepare(
    audio: object, *, length: int, sample_rate: int, channels: int, device: torch.device | str, name: str = "audio"
) -> torch.Tensor:
    """The official ``prepare_audio``: a ``(rate, samples)`` / ``(samples, rate)`` pair -> (channels, length)
    float32 on ``device`` at ``sample_rate``.

    Channels are chosen and the clip is cut to what ``length`` output samples need before resampling
    (resampling works per channel and each output sample only depends on nearby input, so the result is the
    same): the cost depends on the output length, not on the clip's length or channel count."""
    rate, samples = rate_and_samples(audio, name)
    samples = model_channels(channels_first(samples, name), channels, name)
    needed = length if rate == sample_rate else input_samples_needed(length, rate, sample_rate)
    samples = samples[:, :needed].to(device=device, dtype=torch.float32)
    return fit_length(resample(samples, rate, sample_rate), length)


def encoder_batch(
    clips: Sequence[object], rates: int | Sequence[int], sample_rate: int, multiple: int, channels: int
) -> torch.Tensor:
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
        rate = validate_sample_rate(rate, f"clip {i}")
        clip = model_channels(channels_first(clip, f"clip {i}"), channels, f"clip {i}")
        resampled.append(resample(clip.float(), rate, sample_rate))
    longest = max(c.shape[-1] for c in resampled)
    length = -(-longest // multiple) * multiple
    return torch.stack([fit_length(c, length) for c in resampled])
