"""Resampling input audio to the model's rate, at a cost bounded for any pair of rates.

The official code resamples with torchaudio (``transforms.Resample``: windowed-sinc interpolation, Hann
window, 6 zero crossings, roll-off 0.99). torchaudio builds one filter per output phase, ``new / gcd``
filters of ``orig / gcd + 2 * width`` taps each, and runs them as a dense convolution. For the usual rates
the reduced ratio is small (48 kHz -> 44.1 kHz: 147 filters of 174 taps), but for an awkward rate it is not:
44101 Hz -> 44100 Hz is 44100 filters of 44115 taps, one 7.8 GB tensor (several during its construction),
and 4001 Hz takes 2.8 GiB and seconds of dense convolution per second of audio, nearly all of it
multiplications by zero.

:func:`resample` therefore keeps torchaudio's own computation whenever its filter bank is small (every common
rate, so those results stay exactly the official ones) and otherwise evaluates the same interpolation
formula directly: each output sample is the weighted sum of the ``2 * width + 2`` input samples around its
position, with the weights torchaudio's filter bank holds there (its other taps are zero). The weights
(one row per phase, at most 44100 x 108 for a 44.1 kHz target) and one block of outputs (a frame of phases,
or ``_CHUNK`` outputs) are all the memory it needs, and the work grows with the output length alone.
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

_CHUNK = 1 << 15  # output samples per step of the direct evaluation (at least one frame of phases)


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

    Output ``n`` sits at input position ``n * orig / new``; the taps ``i`` around it get the weight
    ``k(t)``, ``t = (i / orig - n / new) * base`` (reduced rates, ``base = min(orig, new) * rolloff``):
    ``k(t) = sinc(t) * cos(pi t / 12)^2 * base / orig`` for ``|t| < 6`` and 0 beyond, which is torchaudio's
    filter bank entry for that tap. The weights only depend on the output's phase ``n mod new``, so they are
    computed once per phase (``new`` x ``2 * width + 2`` of them: at most 44100 x 108 for a 44.1 kHz target).
    Samples outside the input count as 0, as torchaudio's zero padding.
    """
    orig, new = _reduced(orig_freq, new_freq)
    width = filter_half_width(orig_freq, new_freq)
    base = min(orig, new) * ROLLOFF
    device = waveform.device
    offsets = torch.arange(-width, width + 2, device=device)
    phases = torch.arange(new, device=device)
    first = phases * orig // new  # the input sample at or before each phase's position (exact integers)
    # t in float64 from exact integer numerators: i / orig - j / new = (i * new - j * orig) / (orig * new)
    t = ((first[:, None] + offsets) * new - phases[:, None] * orig).double() * (base / (orig * new))
    t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * (math.pi / LOWPASS_FILTER_WIDTH / 2)) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    weights = (sinc * window * (base / orig)).to(waveform.dtype)  # (new, 2 * width + 2)

    shape = waveform.shape
    signal = waveform.reshape(-1, shape[-1])
    out_length = -(-new * signal.shape[-1] // orig)
    # Outputs come in frames of `new` phases; frame m, phase j reads padded[m * orig + first[j] + k], k < taps.
    frames = -(-out_length // new)
    taps = 2 * width + 2
    padded = torch.nn.functional.pad(signal, (width, width + 2 + orig))  # the last frame's windows are inside
    windows = padded.unfold(-1, taps, 1)  # (C, positions, taps), a view
    out = signal.new_empty(signal.shape[0], frames * new)
    step = max(1, _CHUNK // new)
    for frame in range(0, frames, step):
        count = min(step, frames - frame)
        starts = (torch.arange(frame, frame + count, device=device)[:, None] * orig + first).reshape(-1)
        block = windows[:, starts].view(signal.shape[0], count, new, taps)
        out[:, frame * new : (frame + count) * new] = torch.einsum("cfjk,jk->cfj", block, weights).flatten(1)
    return out[:, :out_length].reshape(*shape[:-1], out_length)
