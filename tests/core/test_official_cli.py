"""Our CLI with the official ``stable-audio`` flags: the official test suite's CLI scenarios (tests/test_cli.py at
636f906: every flag's wiring, with the model and the audio I/O mocked as there) and every CLI example of the
official README, run for real on tiny models from a Hugging Face cache.

The examples run with their own flags and values except that seconds are divided by 20 and ``--steps 1
--seed 0`` are appended (official flags too; a missing ``--duration`` gets its default / 20): the written
files are then compared with the Python API called with what each flag means.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest.mock import MagicMock, patch

import pytest
import tomllib
import torch
from official_assets import sine_wave, write_lora

from sa3_core import StableAudioModel
from sa3_core.__main__ import main
from sa3_core.wav import read_wav, write_wav

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 44100
FAKE_AUDIO_PATH = "some/audio.wav"
_FAKE_WAVEFORM = torch.zeros(2, SAMPLE_RATE * 5)


def _make_model_mock(batch: int = 1, duration: float = 5.0) -> MagicMock:
    model = MagicMock()
    model.sample_rate = SAMPLE_RATE
    model.generate.return_value = torch.zeros(batch, 2, int(SAMPLE_RATE * duration))
    return model


def _run(argv: list[str]) -> None:
    assert main(argv) == 0


@pytest.fixture(autouse=True)
def mock_write():
    with patch("sa3_core.__main__.write_wav") as mock:
        yield mock


@pytest.fixture(autouse=True)
def mock_read():
    with patch("sa3_core.__main__.read_wav", return_value=(SAMPLE_RATE, _FAKE_WAVEFORM)):  # ours: (rate, tensor)
        yield


@pytest.fixture
def mock_model():
    model = _make_model_mock()
    with patch("sa3_core.pipeline.StableAudioModel.from_pretrained", return_value=model) as loader:
        model.loader = loader
        yield model


def _with_model(model: MagicMock):
    return patch("sa3_core.pipeline.StableAudioModel.from_pretrained", return_value=model)


# -- model loading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name", ["medium", "small-music", "small-sfx", "medium-base", "small-music-base", "small-sfx-base"]
)
def test_model_selection(mock_model, model_name):
    _run(["--model", model_name, "-p", "test"])
    mock_model.loader.assert_called_once()
    args, kwargs = mock_model.loader.call_args
    assert args == (model_name,) and kwargs["device"] is None and kwargs["model_half"] is True


def test_default_model_is_medium(mock_model):
    _run(["-p", "test"])
    assert mock_model.loader.call_args.args == ("medium",)


def test_device_flag(mock_model):
    _run(["--device", "cpu", "-p", "test"])
    assert mock_model.loader.call_args.kwargs["device"] == "cpu"


def test_no_half_flag(mock_model):
    _run(["--no-half", "-p", "test"])
    assert mock_model.loader.call_args.kwargs["model_half"] is False


# -- text-to-audio ---------------------------------------------------------------------------------------


def test_text_to_audio_defaults(mock_model):
    _run(["-p", "ocean waves"])
    mock_model.generate.assert_called_once()
    kwargs = mock_model.generate.call_args.kwargs
    assert kwargs["prompt"] == "ocean waves"
    assert kwargs["duration"] == 120.0
    assert kwargs["steps"] == 8
    assert kwargs["cfg_scale"] == 1.0
    assert kwargs["seed"] == -1
    assert kwargs["batch_size"] == 1
    assert kwargs["negative_prompt"] is None
    assert kwargs["init_audio"] is None
    assert kwargs["inpaint_audio"] is None
    assert kwargs["chunked_decode"] is None


def test_generation_flags(mock_model):
    _run(["-p", "drums", "--duration", "20", "--steps", "50", "--cfg-scale", "7", "--seed", "42"])
    kwargs = mock_model.generate.call_args.kwargs
    assert (kwargs["duration"], kwargs["steps"], kwargs["cfg_scale"], kwargs["seed"]) == (20.0, 50, 7.0, 42)


def test_negative_prompt(mock_model):
    _run(["-p", "jazz", "--negative-prompt", "bad quality"])
    assert mock_model.generate.call_args.kwargs["negative_prompt"] == "bad quality"


# -- output files ----------------------------------------------------------------------------------------


def test_output_single(mock_model, mock_write, tmp_path):
    out = str(tmp_path / "out.wav")
    _run(["-p", "test", "-o", out])
    assert mock_write.call_count == 1
    saved_path, saved_tensor, saved_sr = mock_write.call_args.args
    assert str(saved_path) == out and saved_sr == SAMPLE_RATE
    assert torch.equal(saved_tensor, mock_model.generate.return_value[0])


def test_output_batch_naming(mock_write, tmp_path):
    with _with_model(_make_model_mock(batch=3)):
        _run(["-p", "a", "b", "c", "--batch-size", "3", "-o", str(tmp_path / "out.wav")])
    base = str(tmp_path / "out")
    assert [str(c.args[0]) for c in mock_write.call_args_list] == [f"{base}_0.wav", f"{base}_1.wav", f"{base}_2.wav"]


def test_output_without_extension_gets_wav_and_other_formats_are_refused(mock_model, mock_write, tmp_path):
    _run(["-p", "test", "-o", str(tmp_path / "take")])
    assert str(mock_write.call_args.args[0]) == str(tmp_path / "take.wav")
    with pytest.raises(SystemExit):
        main(["-p", "test", "-o", str(tmp_path / "take.mp3")])


# -- batches ---------------------------------------------------------------------------------------------


def test_batch_per_batch_prompts_infers_batch_size():
    model = _make_model_mock(batch=3)
    with _with_model(model):
        _run(["-p", "p1", "p2", "p3"])
    kwargs = model.generate.call_args.kwargs
    assert kwargs["prompt"] == ["p1", "p2", "p3"] and kwargs["batch_size"] == 3


def test_batch_explicit_batch_size_matches_prompts():
    model = _make_model_mock(batch=3)
    with _with_model(model):
        _run(["-p", "p1", "p2", "p3", "--batch-size", "3"])
    assert model.generate.call_args.kwargs["batch_size"] == 3


def test_batch_prompt_count_mismatch_fails():
    with pytest.raises(SystemExit):
        main(["-p", "p1", "p2", "p3", "--batch-size", "2"])


def test_batch_per_batch_durations():
    model = _make_model_mock(batch=2)
    with _with_model(model):
        _run(["-p", "p1", "p2", "--duration", "20", "30"])
    assert model.generate.call_args.kwargs["duration"] == [20.0, 30.0]


def test_batch_duration_count_mismatch_fails():
    with pytest.raises(SystemExit):
        main(["-p", "p1", "p2", "--duration", "20", "30", "40"])


def test_batch_per_batch_negative_prompts():
    model = _make_model_mock(batch=2)
    with _with_model(model):
        _run(["-p", "p1", "p2", "--negative-prompt", "n1", "n2"])
    assert model.generate.call_args.kwargs["negative_prompt"] == ["n1", "n2"]


def test_batch_negative_prompt_count_mismatch_fails():
    with pytest.raises(SystemExit):
        main(["-p", "p1", "p2", "--negative-prompt", "n1", "n2", "n3"])


def test_repeated_prompt_flags_add_items():
    """Ours: ``-p a -p b`` (the older spelling) is a batch too; the official CLI keeps only the last one."""
    model = _make_model_mock(batch=2)
    with _with_model(model):
        _run(["-p", "a", "-p", "b"])
    assert model.generate.call_args.kwargs["prompt"] == ["a", "b"]


# -- audio-to-audio, inpainting --------------------------------------------------------------------------


def test_audio_to_audio(mock_model):
    _run(["-p", "bossa nova", "--init-audio", FAKE_AUDIO_PATH, "--init-noise-level", "0.7"])
    kwargs = mock_model.generate.call_args.kwargs
    sr, waveform = kwargs["init_audio"]
    assert sr == SAMPLE_RATE and torch.equal(waveform, _FAKE_WAVEFORM)
    assert kwargs["init_noise_level"] == 0.7 and kwargs["inpaint_audio"] is None


def test_audio_to_audio_default_noise_level(mock_model):
    _run(["-p", "test", "--init-audio", FAKE_AUDIO_PATH])
    assert mock_model.generate.call_args.kwargs["init_noise_level"] == 0.9


def test_inpaint_single_region(mock_model):
    _run(["-p", "kick drum", "--inpaint-audio", FAKE_AUDIO_PATH, "--inpaint-start", "2.0", "--inpaint-end", "5.0"])
    kwargs = mock_model.generate.call_args.kwargs
    sr, waveform = kwargs["inpaint_audio"]
    assert sr == SAMPLE_RATE and torch.equal(waveform, _FAKE_WAVEFORM) and kwargs["init_audio"] is None
    assert (kwargs["inpaint_mask_start_seconds"], kwargs["inpaint_mask_end_seconds"]) == (2.0, 5.0)


def test_inpaint_multiple_regions(mock_model):
    _run(
        [
            "-p",
            "fill",
            "--inpaint-audio",
            FAKE_AUDIO_PATH,
            "--inpaint-start",
            "1.0",
            "--inpaint-start",
            "8.0",
            "--inpaint-end",
            "4.0",
            "--inpaint-end",
            "12.0",
        ]
    )
    kwargs = mock_model.generate.call_args.kwargs
    assert kwargs["inpaint_mask_start_seconds"] == [1.0, 8.0] and kwargs["inpaint_mask_end_seconds"] == [4.0, 12.0]


def test_inpaint_continuation(mock_model):
    _run(
        [
            "-p",
            "continue",
            "--inpaint-audio",
            FAKE_AUDIO_PATH,
            "--inpaint-start",
            "5.0",
            "--inpaint-end",
            "15.0",
            "--duration",
            "15",
        ]
    )
    kwargs = mock_model.generate.call_args.kwargs
    assert (kwargs["inpaint_mask_start_seconds"], kwargs["inpaint_mask_end_seconds"], kwargs["duration"]) == (
        5.0,
        15.0,
        15.0,
    )


def test_our_region_flag_adds_regions(mock_model):
    _run(
        [
            "-p",
            "fill",
            "--inpaint-audio",
            FAKE_AUDIO_PATH,
            "--inpaint-start",
            "1",
            "--inpaint-end",
            "2",
            "--region",
            "3:4",
        ]
    )
    kwargs = mock_model.generate.call_args.kwargs
    assert kwargs["inpaint_mask_start_seconds"] == [1.0, 3.0] and kwargs["inpaint_mask_end_seconds"] == [2.0, 4.0]


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", "test", "--inpaint-start", "2.0", "--inpaint-end", "5.0"],  # region without audio
        ["-p", "test", "--inpaint-audio", FAKE_AUDIO_PATH],  # audio without region
        ["-p", "test", "--inpaint-audio", FAKE_AUDIO_PATH, "--inpaint-start", "2.0"],  # start without end
        [
            "-p",
            "test",
            "--inpaint-audio",
            FAKE_AUDIO_PATH,
            "--inpaint-start",
            "1.0",
            "--inpaint-start",
            "5.0",
            "--inpaint-end",
            "3.0",
        ],  # mismatched counts
        ["-p", "test", "--chunked-decode", "--no-chunked-decode"],
    ],
)
def test_usage_errors_exit(argv):
    with pytest.raises(SystemExit):
        main(argv)


# -- chunked decode, LoRA --------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,expected", [(["--chunked-decode"], True), (["--no-chunked-decode"], False), ([], None)])
def test_chunked_decode(mock_model, flags, expected):
    _run(["-p", "test", *flags])
    assert mock_model.generate.call_args.kwargs["chunked_decode"] is expected


def test_lora_single(mock_model):
    _run(["-p", "test", "--lora-ckpt-path", "lora.safetensors"])
    mock_model.load_lora.assert_called_once_with(["lora.safetensors"])


def test_lora_stacked(mock_model):
    _run(["-p", "test", "--lora-ckpt-path", "a.safetensors", "--lora-ckpt-path", "b.safetensors"])
    mock_model.load_lora.assert_called_once_with(["a.safetensors", "b.safetensors"])


def test_lora_strength(mock_model):
    _run(["-p", "test", "--lora-ckpt-path", "lora.safetensors", "--lora-strength", "0.5"])
    mock_model.set_lora_strength.assert_called_once_with(0.5, lora_index=None)


def test_lora_strength_with_index(mock_model):
    _run(
        [
            "-p",
            "test",
            "--lora-ckpt-path",
            "a.safetensors",
            "--lora-ckpt-path",
            "b.safetensors",
            "--lora-strength",
            "0.3",
            "--lora-index",
            "1",
        ]
    )
    mock_model.set_lora_strength.assert_called_once_with(0.3, lora_index=1)


def test_our_lora_flag_stacks_after_the_official_ones(mock_model):
    _run(["-p", "test", "--lora-ckpt-path", "a.safetensors", "--lora", "b.safetensors:0.4:dit"])
    mock_model.load_lora.assert_called_once_with(["a.safetensors", "b.safetensors"])
    mock_model.set_lora_strength.assert_called_once_with(0.4, lora_index=1, target="dit")


def test_no_lora_no_load(mock_model):
    _run(["-p", "test"])
    mock_model.load_lora.assert_not_called()
    mock_model.set_lora_strength.assert_not_called()


# -- entry points ----------------------------------------------------------------------------------------


def test_console_script_and_help() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"sa3": "sa3_core.__main__:main"}  # not `stable-audio`: both packages can be installed
    result = subprocess.run(
        [sys.executable, "-m", "sa3_core", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for flag in (
        "--model",
        "--no-half",
        "--negative-prompt",
        "--init-noise-level",
        "--inpaint-start",
        "--chunked-decode",
        "--lora-ckpt-path",
        "--lora-strength",
        "--lora-index",
        "--output",
    ):
        assert flag in result.stdout


# --------------------------------------------------------------------------------------------------------
# The official README's CLI examples, run for real
# --------------------------------------------------------------------------------------------------------

README_EXAMPLES = [
    # (example as the README writes it, what the official CLI passes to from_pretrained and generate)
    (
        'stable-audio --model small-music -p "lo-fi hip hop beat, 90 BPM" --duration 30 -o beat.wav',
        "small-music",
        dict(prompt="lo-fi hip hop beat, 90 BPM", duration=30.0),
        ["beat.wav"],
    ),
    (
        'stable-audio -p "bossa nova bassline" --init-audio input.wav --init-noise-level 0.8 -o out.wav',
        "medium",
        dict(prompt="bossa nova bassline", duration=120.0, init_audio="input.wav", init_noise_level=0.8),
        ["out.wav"],
    ),
    (
        'stable-audio -p "punchy kick drum fill" --inpaint-audio input.wav --inpaint-start 4 --inpaint-end 8 '
        "-o out.wav",
        "medium",
        dict(
            prompt="punchy kick drum fill",
            duration=120.0,
            inpaint_audio="input.wav",
            inpaint_mask_start_seconds=4.0,
            inpaint_mask_end_seconds=8.0,
        ),
        ["out.wav"],
    ),
    (
        'stable-audio -p "dreamy synth outro" --inpaint-audio input.wav --inpaint-start 10 --inpaint-end 30 '
        "--duration 30 -o out.wav",
        "medium",
        dict(
            prompt="dreamy synth outro",
            duration=30.0,
            inpaint_audio="input.wav",
            inpaint_mask_start_seconds=10.0,
            inpaint_mask_end_seconds=30.0,
        ),
        ["out.wav"],
    ),
    (
        'stable-audio -p "orchestral strings" --lora-ckpt-path my_lora.safetensors --lora-strength 0.8 -o out.wav',
        "medium",
        dict(prompt="orchestral strings", duration=120.0, lora=("my_lora.safetensors", 0.8)),
        ["out.wav"],
    ),
]
SECONDS_FLAGS = ("--duration", "--inpaint-start", "--inpaint-end")
SCALE = 20


def scaled(example: str) -> list[str]:
    """The example's arguments with seconds / SCALE, a default duration made explicit, and --steps 1 --seed 0."""
    argv = shlex.split(example)[1:]
    for i, arg in enumerate(argv[:-1]):
        if arg in SECONDS_FLAGS:
            argv[i + 1] = str(float(argv[i + 1]) / SCALE)
    if "--duration" not in argv:
        argv += ["--duration", str(120 / SCALE)]
    return argv + ["--steps", "1", "--seed", "0"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch, hub_cache: Path, fixtures_dir: Path) -> Path:
    """The user's folder: input.wav (10 s in the examples' terms) and my_lora.safetensors (for the default
    model, medium); the examples' relative paths point here."""
    write_wav(tmp_path / "input.wav", sine_wave(10 / SCALE, SAMPLE_RATE) * 0.5, SAMPLE_RATE)
    medium = StableAudioModel.from_pretrained(fixtures_dir / "tiny-medium", device="cpu")
    write_lora(tmp_path / "my_lora.safetensors", {"model.": medium.dit, "conditioners.": medium.conditioners}, seed=4)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def real_io(mock_write):
    """These examples write and read real files."""
    with patch("sa3_core.__main__.write_wav", write_wav), patch("sa3_core.__main__.read_wav", read_wav):
        yield


@pytest.mark.parametrize(
    "example,name,meaning,outputs", README_EXAMPLES, ids=[e[1] + str(i) for i, e in enumerate(README_EXAMPLES)]
)
def test_readme_cli_example(example, name, meaning, outputs, workdir: Path, official_cache: Path, real_io) -> None:
    assert main(scaled(example)) == 0
    model = StableAudioModel.from_pretrained(name, device="cpu")
    kwargs = {k: (read_wav(workdir / v) if k.endswith("_audio") else v) for k, v in meaning.items() if k != "lora"}
    for key in ("duration", "inpaint_mask_start_seconds", "inpaint_mask_end_seconds"):
        if key in kwargs:
            kwargs[key] /= SCALE
    if "lora" in meaning:
        model.load_lora([workdir / meaning["lora"][0]])
        model.set_lora_strength(meaning["lora"][1])
    kwargs.setdefault("init_noise_level", 0.9)  # the CLI's default, passed always (used with init audio only)
    expected = model.generate(**kwargs, steps=1, seed=0)
    for output, item in zip(outputs, expected):
        rate, audio = read_wav(workdir / output)
        assert rate == SAMPLE_RATE and audio.shape == item.shape
        assert (audio - item).abs().max() <= 1 / 32768  # 16-bit PCM


def test_example_in_a_fresh_process_with_hf_hub_cache(hub_cache: Path, tmp_path: Path) -> None:
    """``python -m sa3_core`` with the official t2a flags; the cache comes from $HF_HUB_CACHE."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "SA3_MODELS_DIR")}
    env.update(HF_HUB_CACHE=str(hub_cache), PYTHONPATH=str(REPO))
    argv = scaled('stable-audio --model small-music -p "lo-fi hip hop beat, 90 BPM" --duration 30 -o beat.wav')
    result = subprocess.run(
        [sys.executable, "-m", "sa3_core", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "Saved: beat.wav" in result.stdout
    assert read_wav(tmp_path / "beat.wav")[1].shape == (2, int(30 / SCALE * SAMPLE_RATE))


def test_a_missing_model_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("SA3_MODELS_DIR", raising=False)
    assert main(["--model", "small-sfx", "-p", "x", "-o", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert "error: 'small-sfx': no local copy found (nothing is downloaded)" in err
    assert "stabilityai/stable-audio-3-small-sfx" in err and not (tmp_path / "x.wav").exists()
