"""Spectrogram pictures of audio: log-mel or log-magnitude, coloured, with the axis ticks to label them.

Host-free (torch only). The level scale is absolute, so pictures of different clips compare: 0 dB is the
level of a full-scale sine in its frequency bin, and the colours span ``[-dynamic_range_db, 0]`` dB
(silence is black, clipping-level content is white-yellow). Stereo and multichannel audio is shown as
the mean power of its channels.

Drawing text (tick labels, titles) is left to the caller, which gets the tick positions as fractions of
the picture's width and height (``Spectrogram.time_ticks`` / ``frequency_ticks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCALES = ("mel", "linear")
N_FFT = 2048
N_MELS = 128
MIN_FREQUENCY = 20.0  # the mel scale's bottom edge (Hz); the linear scale starts at 0

# A perceptually ordered dark-to-bright colour map (anchor colours in RGB 0-255, evenly spaced, linearly
# interpolated): black - purple - red - orange - pale yellow.
COLORMAP = (
    (0, 0, 4),
    (28, 16, 68),
    (79, 18, 123),
    (129, 37, 129),
    (181, 54, 122),
    (229, 80, 100),
    (251, 135, 97),
    (254, 194, 135),
    (252, 253, 191),
)

_TIME_STEPS = (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120)
_MEL_TICKS_HZ = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
_LINEAR_STEPS_HZ = (1000, 2000, 5000, 10000)


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """The HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_edges(sample_rate: int, n_mels: int = N_MELS, f_min: float = MIN_FREQUENCY) -> torch.Tensor:
    """(n_mels + 2,) frequencies (Hz) evenly spaced in mel from f_min to Nyquist: filter i rises from
    edge i, peaks at edge i + 1 (its centre) and falls to edge i + 2."""
    low, high = float(hz_to_mel(f_min)), float(hz_to_mel(sample_rate / 2))
    return mel_to_hz(torch.linspace(low, high, n_mels + 2, dtype=torch.float64))


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int = N_MELS, f_min: float = MIN_FREQUENCY) -> torch.Tensor:
    """(n_mels, n_freqs) triangular filters with peak 1 on the STFT bins 0 .. Nyquist (see mel_edges)."""
    edges = mel_edges(sample_rate, n_mels, f_min)
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


@dataclass(frozen=True)
class Spectrogram:
    """``db``: (batch, rows, frames) levels in dB within ``[-dynamic_range_db, 0]``, row 0 the lowest
    frequency; ``row_frequencies``: the centre frequency of each row (Hz); ``seconds``: the audio's length."""

    db: torch.Tensor
    row_frequencies: torch.Tensor
    seconds: float
    sample_rate: int
    scale: str
    dynamic_range_db: float

    def frequency_fraction(self, hz: float) -> float:
        """Where ``hz`` lies on the frequency axis: 0 at the bottom row's centre, 1 at the top row's."""
        low, high = float(self.row_frequencies[0]), float(self.row_frequencies[-1])
        if self.scale == "mel":
            low, high, hz = float(hz_to_mel(low)), float(hz_to_mel(high)), float(hz_to_mel(hz))
        return (hz - low) / (high - low)

    def frequency_ticks(self) -> list[tuple[float, str]]:
        """(fraction of the height from the bottom, label) for round frequencies on the axis."""
        nyquist = self.sample_rate / 2
        if self.scale == "mel":
            candidates = [f for f in _MEL_TICKS_HZ if f <= nyquist]
        else:
            step = next((s for s in _LINEAR_STEPS_HZ if nyquist / s <= 6), _LINEAR_STEPS_HZ[-1])
            candidates = [step * i for i in range(int(nyquist // step) + 1)]
        ticks = [(self.frequency_fraction(f), _hz_label(f)) for f in candidates]
        return [(fraction, label) for fraction, label in ticks if -1e-6 <= fraction <= 1 + 1e-6]

    def time_ticks(self, max_ticks: int = 10) -> list[tuple[float, str]]:
        """(fraction of the width from the left, label in seconds) at a round step, at most ``max_ticks``."""
        if self.seconds <= 0:
            return [(0.0, "0")]
        step = next((s for s in _TIME_STEPS if self.seconds / s <= max_ticks), _TIME_STEPS[-1])
        count = int(math.floor(self.seconds / step + 1e-9))
        return [(i * step / self.seconds, _seconds_label(i * step)) for i in range(count + 1)]


def _hz_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def _seconds_label(seconds: float) -> str:
    return f"{round(seconds, 2):g}"


def spectrogram(
    waveform: torch.Tensor, sample_rate: int, *, scale: str = "mel", width: int = 1024, dynamic_range_db: float = 80.0
) -> Spectrogram:
    """The levels of ``waveform`` (batch, channels, samples) over time and frequency.

    The hop between frames follows the length (about two frames per picture column, at least N_FFT/4,
    at most N_FFT), so long audio costs no more than the picture needs. Levels are clamped to
    ``[-dynamic_range_db, 0]`` dB.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if waveform.ndim != 3 or waveform.shape[-1] == 0:
        raise ValueError(f"expected audio of shape (batch, channels, samples > 0), got {tuple(waveform.shape)}")
    if not dynamic_range_db > 0:
        raise ValueError(f"dynamic_range_db must be > 0, got {dynamic_range_db}")
    batch, channels, samples = waveform.shape
    hop = min(N_FFT, max(N_FFT // 4, math.ceil(samples / (2 * width))))
    window = torch.hann_window(N_FFT, dtype=torch.float32, device=waveform.device)
    spectrum = torch.stft(
        waveform.reshape(batch * channels, samples).float(),
        N_FFT,
        hop_length=hop,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    # |X| of a full-scale sine in its bin is sum(window) / 2: scaled so that is power 1 (0 dB).
    power = (spectrum.abs() / (window.sum() / 2)) ** 2
    power = power.reshape(batch, channels, *power.shape[1:]).mean(dim=1)  # (batch, freqs, frames)
    if scale == "mel":
        power = torch.einsum("mf,bft->bmt", mel_filterbank(power.shape[1], sample_rate).to(power.device), power)
        rows = mel_edges(sample_rate)[1:-1].float()
    else:
        rows = torch.linspace(0, sample_rate / 2, power.shape[1])
    db = 10.0 * torch.log10(power.clamp_min(1e-20))
    db = db.clamp(-float(dynamic_range_db), 0.0)
    return Spectrogram(
        db=db.cpu(),
        row_frequencies=rows,
        seconds=samples / sample_rate,
        sample_rate=sample_rate,
        scale=scale,
        dynamic_range_db=float(dynamic_range_db),
    )


def colorize(spec: Spectrogram, width: int, height: int) -> torch.Tensor:
    """(batch, height, width, 3) RGB in [0, 1]: the levels resized to the picture (top row = highest
    frequency) and mapped through COLORMAP from ``-dynamic_range_db`` (black) to 0 dB (pale yellow)."""
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width} x {height}")
    levels = torch.nn.functional.interpolate(
        spec.db[:, None], size=(height, width), mode="bilinear", align_corners=True
    )[:, 0]
    levels = levels.flip(1)  # row 0 of the picture is the top: the highest frequency
    floor = spec.dynamic_range_db
    position = ((levels + floor) / floor).clamp(0, 1) * (len(COLORMAP) - 1)
    low = position.floor().long().clamp(max=len(COLORMAP) - 2)
    weight = (position - low)[..., None]
    colours = torch.tensor(COLORMAP, dtype=torch.float32) / 255.0
    return colours[low] * (1 - weight) + colours[low + 1] * weight
