"""sa3_core.spectrogram: levels, frequency placement, ticks and colours of the spectrogram pictures."""

from __future__ import annotations

import pytest
import torch

from sa3_core.spectrogram import COLORMAP, colorize, hz_to_mel, mel_filterbank, mel_to_hz, spectrogram

SR = 44100


def tone(hz: float, seconds: float = 1.0, amplitude: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return amplitude * torch.sin(2 * torch.pi * hz * t)


def loudest_row_hz(spec, item: int = 0) -> float:
    return float(spec.row_frequencies[spec.db[item].mean(-1).argmax()])


@pytest.mark.parametrize("scale", ["mel", "linear"])
def test_a_tone_is_brightest_in_its_own_row(scale: str) -> None:
    audio = torch.stack([torch.stack([tone(440), tone(440)]), torch.stack([tone(5000), tone(5000)])])
    spec = spectrogram(audio, SR, scale=scale)
    assert spec.db.shape[0] == 2
    for item, hz in enumerate([440, 5000]):
        assert abs(loudest_row_hz(spec, item) - hz) / hz < 0.06  # one mel band / FFT bin of slack


def test_levels_are_absolute_and_clamped() -> None:
    full = spectrogram(tone(1000)[None, None], SR, scale="linear")
    quiet = spectrogram(tone(1000, amplitude=0.01)[None, None], SR, scale="linear")
    silent = spectrogram(torch.zeros(1, 2, SR), SR, scale="linear", dynamic_range_db=60)
    assert -2.0 < float(full.db.max()) <= 0.0  # a full-scale sine is about 0 dB (Hann scalloping < 1.5 dB)
    assert float(full.db.max() - quiet.db.max()) == pytest.approx(40.0, abs=0.1)  # amplitude / 100 = -40 dB
    assert torch.all(silent.db == -60.0)


def test_channels_are_averaged_in_power() -> None:
    left_only = torch.stack([tone(1000), torch.zeros(SR)])[None]
    both = torch.stack([tone(1000), tone(1000)])[None]
    difference = spectrogram(both, SR, scale="linear").db.max() - spectrogram(left_only, SR, scale="linear").db.max()
    assert float(difference) == pytest.approx(10 * torch.log10(torch.tensor(2.0)).item(), abs=0.05)


def test_mel_scale_round_trips_and_filters_peak_at_their_centres() -> None:
    hz = torch.tensor([0.0, 700.0, 8000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz(hz_to_mel(hz)), hz)
    assert float(hz_to_mel(700.0)) == pytest.approx(2595 * torch.log10(torch.tensor(2.0)).item())
    bank = mel_filterbank(1025, SR)
    assert bank.shape == (128, 1025) and float(bank.max()) <= 1.0
    peaks = bank.argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the band index


def test_time_ticks_use_a_round_step_within_the_clip() -> None:
    spec = spectrogram(torch.zeros(1, 1, int(4.5 * SR)), SR)
    ticks = spec.time_ticks(max_ticks=10)
    assert [label for _, label in ticks] == ["0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5"]
    assert ticks[0][0] == 0.0 and ticks[-1][0] == pytest.approx(1.0)
    long = spectrogram(torch.zeros(1, 1, 120 * SR), SR).time_ticks(max_ticks=10)
    assert [label for _, label in long][:3] == ["0", "15", "30"]


@pytest.mark.parametrize(
    "scale, labels",
    [
        ("mel", ["50", "100", "200", "500", "1k", "2k", "5k", "10k", "20k"]),
        ("linear", ["0", "5k", "10k", "15k", "20k"]),
    ],
)
def test_frequency_ticks_rise_from_the_bottom(scale: str, labels: list[str]) -> None:
    spec = spectrogram(tone(1000)[None, None], SR, scale=scale)
    ticks = spec.frequency_ticks()
    assert [label for _, label in ticks] == labels
    fractions = [fraction for fraction, _ in ticks]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1
    # The 1 kHz tone's row sits where the 1k tick is (within a row).
    one_k = spec.frequency_fraction(1000.0)
    loudest = int(spec.db[0].mean(-1).argmax()) / (spec.db.shape[1] - 1)
    assert abs(loudest - one_k) < 2 / spec.db.shape[1]


def test_colours_put_high_frequencies_on_top_and_span_the_map() -> None:
    spec = spectrogram(tone(15000)[None, None], SR, scale="linear")
    picture = colorize(spec, width=64, height=100)
    assert picture.shape == (1, 100, 64, 3)
    brightness = picture[0].sum(-1).mean(-1)  # per picture row
    row = int(brightness.argmax())
    assert row == pytest.approx(100 * (1 - 15000 / 22050), abs=2)
    black = torch.tensor(COLORMAP[0], dtype=torch.float32) / 255
    torch.testing.assert_close(picture[0, -1, 5], black)  # no energy near 0 Hz: the floor colour


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scale="bark"), "scale must be one of mel, linear"),
        (dict(dynamic_range_db=0), "dynamic_range_db must be > 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spectrogram(torch.zeros(1, 1, 100), SR, **kwargs)
    with pytest.raises(ValueError, match="batch, channels, samples"):
        spectrogram(torch.zeros(1, 100), SR)
