"""Resampling input audio to the model's rate, at a cost bounded for any pair of rates.

The official code resamples with torchaudio (``transforms.Resample``: windowed-sinc interpolation, Hann
window, 6 zero crossings, roll-off 0.99). torchaudio builds one filter per output phase, ``new / gcd``
filters of ``orig / gcd + 2 * width`` taps each, and runs them as a dense convolution. For the usual rates
the reduced ratio is small (48 kHz -> 44.1 kHz: 147 filters of 174 taps), but for an awkward rate it is not:
44101 Hz -> 44100 Hz is 44100 filters of 44115 taps, one 7.8 GB tensor, and 4001 Hz needs 0.7 GB and
13 s for one second of audio.

:func:`resample` therefore keeps torchaudio's own computation whenever its filter bank is small (every common
rate, so those results stay exactly the official ones) and otherwise evaluates the same interpolation
formula directly: each output sample is the weighted sum of the ``2 * width + 2`` input samples around its
position, with the weights torchaudio's filter bank would hold there. The memory is a few megabytes per
chunk of outputs and the work grows with the output length alone.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF

# torchaudio's defaults, which the official prepare_audio uses.
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99

MAX_FILTER_BANK = 1 << 21
"""Largest torchaudio filter bank (phases x taps, float32 elements: 8 MB) used as is. The common rates stay
far below it (384 kHz -> 44.1 kHz, the largest: 0.2 M elements)."""

_CHUNK = 1 << 15  # output samples per step of the direct evaluation


def _reduced(orig_freq: int, new_freq: int) -> tuple[int, int]:
    gcd = math.gcd(orig_freq, new_freq)
    return orig_freq // gcd, new_freq // gcd


def filter_half_width(orig_freq: int, new_freq: int) -> int:
    """Input samples the filter reaches on each side of an output sample's position (torchaudio's ``width``)."""
    orig, new = _reduced(orig_freq, new_freq)
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))


def filter_bank_size(orig_freq: int, new_freq: int) -> int:
    """Elements of torchaudio's filter bank for this pair of rates: phases x taps."""
    orig, new = _reduced(orig_freq, new_freq)
    return new * (orig + 2 * filter_half_width(orig_freq, new_freq))


def input_samples_needed(output_samples: int, orig_freq: int, new_freq: int) -> int:
    """How many input samples determine the first ``output_samples`` outputs: their span plus the filter's
    reach. Cutting the input there before resampling leaves those outputs unchanged."""
    orig, new = _reduced(orig_freq, new_freq)
    return -(-output_samples * orig // new) + filter_half_width(orig_freq, new_freq) + 1


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``waveform`` (..., T) float from ``orig_freq`` to ``new_freq`` Hz, as ``torchaudio.functional.resample``
    with its defaults: the same length ``ceil(T * new / orig)`` and the same values (exactly the same where
    torchaudio's filter bank is at most :data:`MAX_FILTER_BANK`, within float rounding elsewhere)."""
    if orig_freq == new_freq:
        return waveform
    if filter_bank_size(orig_freq, new_freq) <= MAX_FILTER_BANK:
        return AF.resample(waveform, orig_freq, new_freq)
    return sinc_resample(waveform, orig_freq, new_freq)


def sinc_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """torchaudio's windowed-sinc interpolation evaluated per output sample (see the module docstring).

    Output ``n`` sits at input position ``c = n * orig / new``; the taps ``i`` around it get the weight
    ``k(t)``, ``t = (i / orig - n / new) * base`` (reduced rates, ``base = min(orig, new) * rolloff``):
    ``k(t) = sinc(t) * cos(pi t / 12)^2 * base / orig`` for ``|t| < 6`` and 0 beyond, which is torchaudio's
    filter bank entry for that tap. Samples outside the input count as 0, as torchaudio's zero padding.
    """
    orig, new = _reduced(orig_freq, new_freq)
    width = filter_half_width(orig_freq, new_freq)
    base = min(orig, new) * ROLLOFF
    shape = waveform.shape
    signal = waveform.reshape(-1, shape[-1])
    length = signal.shape[-1]
    out_length = -(-new * length // orig)
    # Zero padding on both sides, so every tap index below is valid.
    padded = torch.nn.functional.pad(signal, (width, width + 1))
    offsets = torch.arange(-width, width + 2, device=signal.device)
    out = signal.new_empty(signal.shape[0], out_length)
    for start in range(0, out_length, _CHUNK):
        n = torch.arange(start, min(start + _CHUNK, out_length), device=signal.device)
        taps = (n * orig // new)[:, None] + offsets  # (N, 2 * width + 2) input indices, exact integers
        # t in float64 from exact integer numerators: i / orig - n / new = (i * new - n * orig) / (orig * new)
        t = (taps * new - n[:, None] * orig).double() * (base / (orig * new))
        t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
        window = torch.cos(t * (math.pi / LOWPASS_FILTER_WIDTH / 2)) ** 2
        t = t * math.pi
        sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
        weights = (sinc * window * (base / orig)).to(signal.dtype)
        out[:, start:start + n.shape[0]] = (padded[:, taps + width] * weights).sum(-1)
    return out.reshape(*shape[:-1], out_length)
