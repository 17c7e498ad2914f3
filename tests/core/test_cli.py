"""The command line (python -m sa3_core) and its WAV I/O."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sa3_core.__main__ import main
from sa3_core.pipeline import StableAudioModel
from sa3_core.wav import WavError, read_wav, write_wav

REPO = Path(__file__).resolve().parents[2]


def test_wav_round_trip_pcm16_and_float(tmp_path: Path) -> None:
    audio = torch.linspace(-1, 1, 2000).reshape(2, 1000) * 0.9
    write_wav(tmp_path / "a.wav", audio, 22050)
    rate, back = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and back.shape == (2, 1000)
    assert (back - audio).abs().max() <= 0.5 / 32768
    write_wav(tmp_path / "f.wav", audio, 44100, float32=True)
    assert torch.equal(read_wav(tmp_path / "f.wav")[1], audio)
    assert not list(tmp_path.glob(".*.part"))


def test_wav_reads_24_bit_and_refuses_other_files(tmp_path: Path) -> None:
    values = [0, 2**23 - 1, -(2**23), -1]
    payload = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    header += (
        b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 24000, 3, 24) + b"data" + struct.pack("<I", len(payload))
    )
    (tmp_path / "x.wav").write_bytes(header + payload)
    rate, audio = read_wav(tmp_path / "x.wav")
    assert rate == 8000
    assert torch.allclose(audio[0], torch.tensor([0, (2**23 - 1) / 2**23, -1.0, -1 / 2**23]))
    (tmp_path / "y.wav").write_bytes(b"ID3 not a wav")
    with pytest.raises(WavError, match="not a WAV file"):
        read_wav(tmp_path / "y.wav")


def test_cli_generates_what_the_python_api_generates(tmp_path: Path, fixtures_dir: Path) -> None:
    out = tmp_path / "out.wav"
    assert (
        main(
            [
                "generate",
                "--model",
                str(fixtures_dir / "tiny-small"),
                "--prompt",
                "piano drums",
                "--duration",
                "2",
                "--seed",
                "7",
                "--float32-wav",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rate, audio = read_wav(out)
    expected = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu").generate(
        prompt="piano drums", duration=2.0, seed=7
    )
    assert rate == 44100 and audio.shape == (2, 88200)
    assert torch.equal(audio, expected[0])


def test_cli_batch_inpainting_writes_one_file_per_item(tmp_path: Path, fixtures_dir: Path) -> None:
    source = tmp_path / "source.wav"
    write_wav(source, torch.sin(torch.arange(3 * 44100) / 20.0).repeat(2, 1) * 0.2, 44100)
    out = tmp_path / "b.wav"
    code = main(
        [
            "generate",
            "--model",
            str(fixtures_dir / "tiny-small"),
            "--prompt",
            "piano",
            "--prompt",
            "drums",
            "--duration",
            "3",
            "--duration",
            "2",
            "--steps",
            "2",
            "--inpaint-audio",
            str(source),
            "--region",
            "0.5:1.0",
            "--region",
            "1.5:1.8",
            "--seed",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert [read_wav(tmp_path / f"b_{i}.wav")[1].shape for i in (0, 1)] == [(2, 3 * 44100), (2, 2 * 44100)]


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, fixtures_dir: Path, capsys) -> None:
    out = tmp_path / "never.wav"
    code = main(
        [
            "generate",
            "--model",
            str(fixtures_dir / "tiny-small"),
            "--prompt",
            "piano",
            "--duration",
            "200",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "error: duration[0] = 200.0 s is above this model's maximum" in capsys.readouterr().err
    assert not out.exists()
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_tiny_checkpoint_is_labelled(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sa3_core", "tiny", "--out", str(tmp_path / "t")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t" / "model_config.json").is_file()
    assert "TINY RANDOM WEIGHTS" in (tmp_path / "t" / "TINY_RANDOM_WEIGHTS.txt").read_text()
