"""The official package's Python API, played against sa3_core: its test suite's scenarios (Stability-AI/stable-audio-3
``tests/`` at 636f906) and the Python examples of its README and ``docs/workflows/*.md``, with
``from sa3_core import ...`` in place of ``from stable_audio_3 import ...``.

Models are loaded by their official names from a temporary Hugging Face cache holding tiny random-weight
checkpoints (conftest.py). With random weights the official quality checks (a reconstruction's cosine
similarity, "not silent") say nothing, so each scenario keeps the official call and its shape checks and adds
checks that hold for any weights: equality with the golden outputs of the official code, with an equivalent
call, or with a hand-computed result. Where the official tests skip without a GPU (medium, SAME-L, batches,
half precision) the scenario runs here on the CPU (tiny models; half precision through ``dtype=float16``).
Every duration and region is divided by 10 (``s()``) and the step counts are cut (8 -> 2, 50 -> 4; examples
that leave ``steps`` at its default get 2): the calls are the same, the CPU time is not.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from official_assets import sine_wave, torchaudio_load, write_lora
from safetensors.torch import load_file

from sa3_core import AutoencoderModel, StableAudioModel, pipeline
from sa3_core.wav import write_wav
from tests.helpers import relative_l2

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else ("mps" if torch.backends.mps.is_available() else "cpu")  # the official choice
DURATION_SEC, STEPS, STEPS_BASE = 1.0, 2, 4  # the official tests' 10 s, 8 and 50 steps, scaled down
FAST = 2  # steps for the README/docs examples that leave steps at its default (8)
TOLERANCE = 1e-4


def s(seconds):
    """Official seconds, scaled down for the CPU."""
    return [s(v) for v in seconds] if isinstance(seconds, list) else seconds / 10


def assert_audio_valid(audio: torch.Tensor, duration: float, sample_rate: int) -> None:
    """The official checks that hold for random weights, made exact: (B, 2, int(duration * sr)), finite, in [-1, 1]."""
    assert audio.ndim == 3 and audio.shape[1] == 2 and audio.shape[-1] == int(duration * sample_rate), audio.shape
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0


@pytest.fixture(scope="module")
def named(hub_cache: Path):
    """``StableAudioModel.from_pretrained(name, ...)`` with ``hub_cache`` as the user's cache, one load per call."""
    from huggingface_hub import constants

    loaded = {}

    def get(name: str, **kwargs) -> StableAudioModel:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in loaded:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
                loaded[key] = StableAudioModel.from_pretrained(name, **{"device": DEVICE, **kwargs})
        return loaded[key]

    return get


# The official fixtures' parameters, less small-sfx(-base): its tiny stand-in is small-music's (test_hub loads
# it by name); running every scenario twice on the same weights would show nothing more.
@pytest.fixture(scope="module", params=["small-music", "medium"])
def sa3_model(request, named) -> StableAudioModel:
    """The official ``sa3_model`` fixture (medium runs on the CPU here: no flash-attn needed)."""
    return named(request.param)


@pytest.fixture(scope="module", params=["small-music-base", "medium-base"])
def sa3_base_model(request, named) -> StableAudioModel:
    return named(request.param)


@pytest.fixture(scope="module", params=["small-music", "medium"])
def half_model(request, named) -> StableAudioModel:
    """A model with ``model_half`` True (fp16), which the official half-precision scenarios need."""
    return named(request.param, dtype=torch.float16)


@pytest.fixture(scope="module", params=["same-s", "same-l"])
def autoencoder(request, hub_cache: Path) -> AutoencoderModel:
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        return AutoencoderModel.from_pretrained(request.param, device=DEVICE)


# --------------------------------------------------------------------------------------------------
# The official object: names, attributes, precision
# --------------------------------------------------------------------------------------------------


def test_top_level_exports_are_the_official_ones_and_lazy() -> None:
    import subprocess
    import sys

    import sa3_core

    assert sorted(sa3_core.__all__) == ["AutoencoderModel", "StableAudioModel"]
    code = (
        "import sys, sa3_core; assert 'torch' not in sys.modules; "
        "from sa3_core import StableAudioModel, AutoencoderModel"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError):
        sa3_core.AutoEncoder  # noqa: B018


def test_attributes_as_the_official_object_has_them(named, hub_cache: Path) -> None:
    model = named("small-music")
    snapshot = next((hub_cache / "models--stabilityai--stable-audio-3-small-music" / "snapshots").iterdir())
    assert model.model_config == json.loads((snapshot / "model_config.json").read_text())
    assert model.model_config["sample_rate"] == model.sample_rate == 44100
    assert model.model_config.get("io_channels", 2) == 2  # as the official tests read it
    assert str(model.device) == DEVICE
    assert model.model_half is (DEVICE == "cuda")  # official: fp16 on CUDA only
    model.model_config["sample_rate"] = 1  # a plain dict of the user's: editing it changes nothing loaded
    assert model.sample_rate == 44100 and model.config.raw["sample_rate"] == 44100
    model.model_config["sample_rate"] = 44100


def test_from_pretrained_takes_the_official_arguments_and_model_half(monkeypatch, official_cache: Path) -> None:
    """``from_pretrained(name, device, model_half)``, positionally as officially; model_half maps to fp16 / fp32
    on CUDA (checked without a GPU: the loader is replaced before anything touches the device)."""
    seen = {}

    class Captured(Exception):
        pass

    def fake_load_components(path, **kwargs):
        seen.update(path=path, **kwargs)
        raise Captured

    monkeypatch.setattr(pipeline, "load_components", fake_load_components)
    for args, kwargs, dtype in [
        (("medium", "cuda"), {}, torch.float16),
        (("medium", "cuda", False), {}, torch.float32),
        (("medium", "cuda", False), {"dtype": torch.bfloat16}, torch.bfloat16),  # dtype wins
        (("medium", "cpu", True), {}, torch.float32),  # half is off without CUDA
        (("medium",), {"model_half": False, "device": "mps"}, torch.float32),
    ]:
        with pytest.raises(Captured):
            StableAudioModel.from_pretrained(*args, **kwargs)
        assert seen["dtype"] == dtype, (args, kwargs)
        assert seen["path"].parent.name == "snapshots"  # resolved from the cache


# --------------------------------------------------------------------------------------------------
# tests/test_inference.py
# --------------------------------------------------------------------------------------------------


def test_text_to_audio_base(sa3_base_model) -> None:
    model = sa3_base_model
    sr = model.model_config["sample_rate"]
    audio = model.generate(
        prompt="trap drums, hip hop beat, 120bpm", duration=DURATION_SEC, steps=STEPS_BASE, cfg_scale=7.0, seed=1234
    )
    assert_audio_valid(audio, DURATION_SEC, sr)
    assert model.default_sampler == "euler"  # as officially for rectified flow (the next test checks the numbers)


def test_base_model_by_name_reproduces_the_official_output(named, fixtures_dir: Path) -> None:
    """The golden strict case base_small_default (official code, tiny-small-base), through the name."""
    spec = json.loads((fixtures_dir / "strict" / "cases" / "base_small_default.json").read_text())
    reference = load_file(fixtures_dir / "strict" / "cases" / "base_small_default.safetensors")
    audio = named("small-music-base", device="cpu").generate(**spec["generate_kwargs"])
    assert relative_l2(audio, reference["output"]) <= TOLERANCE


def test_text_to_audio(sa3_model) -> None:
    model = sa3_model
    sr = model.model_config["sample_rate"]
    audio = model.generate(
        prompt="trap drums, hip hop beat, 120bpm",
        negative_prompt="low-quality",
        duration=DURATION_SEC,
        steps=STEPS,
        seed=1234,
    )
    assert_audio_valid(audio, DURATION_SEC, sr)
    # At the default cfg_scale 1 the negative prompt has no effect, officially too.
    assert torch.equal(
        audio, model.generate(prompt="trap drums, hip hop beat, 120bpm", duration=DURATION_SEC, steps=STEPS, seed=1234)
    )


def test_inpainting(sa3_model) -> None:
    model = sa3_model
    sr = model.model_config["sample_rate"]
    base_audio = sine_wave(
        s(10.0), sr, channels=model.model_config.get("io_channels", 2), device=str(model.device), half=model.model_half
    )
    audio = model.generate(
        prompt="big trumpet solo, jazz big band, 90bpm",
        duration=s(10.0),
        steps=STEPS,
        inpaint_audio=(sr, base_audio),
        inpaint_mask_start_seconds=s(2.0),
        inpaint_mask_end_seconds=s(7.0),
    )
    assert_audio_valid(audio, s(10.0), sr)


def test_inpainting_multiple_regions(sa3_model) -> None:
    model = sa3_model
    sr = model.model_config["sample_rate"]
    base_audio = sine_wave(s(20.0), sr, device=str(model.device), half=model.model_half)
    kwargs = dict(
        prompt="jazz piano trio, upbeat swing, 120bpm",
        duration=s(20.0),
        steps=STEPS,
        seed=3,
        inpaint_audio=(sr, base_audio),
    )
    audio = model.generate(
        **kwargs, inpaint_mask_start_seconds=s([2.0, 12.0]), inpaint_mask_end_seconds=s([11.0, 19.0])
    )
    assert_audio_valid(audio, s(20.0), sr)
    # The second region matters: one region alone is a different request.
    assert not torch.equal(
        audio, model.generate(**kwargs, inpaint_mask_start_seconds=s(2.0), inpaint_mask_end_seconds=s(11.0))
    )


def test_continuation(sa3_model) -> None:
    model = sa3_model
    sr = model.model_config["sample_rate"]
    base_audio = sine_wave(s(5.0), sr, device=str(model.device), half=model.model_half)
    audio = model.generate(
        prompt="thunderstorm with heavy rain",
        duration=s(15.0),
        steps=STEPS,
        inpaint_audio=(sr, base_audio),
        inpaint_mask_start_seconds=s(5.0),
        inpaint_mask_end_seconds=s(15.0),
    )
    assert_audio_valid(audio, s(15.0), sr)


def test_init_audio(sa3_model) -> None:
    model = sa3_model
    sr = model.model_config["sample_rate"]
    init = sine_wave(DURATION_SEC, sr, device=str(model.device), half=model.model_half)
    kwargs = dict(prompt="funky bass groove", duration=DURATION_SEC, steps=STEPS, seed=9, init_noise_level=0.8)
    audio = model.generate(**kwargs, init_audio=(sr, init))
    assert_audio_valid(audio, DURATION_SEC, sr)
    assert not torch.equal(audio, model.generate(**kwargs))  # the init audio is used


# The official half-precision scenarios, on a model_half model (fp16 GEMMs are slow on a CPU: shorter still).
HALF_SECONDS, HALF_STEPS = 0.5, 2


def test_init_audio_float32_into_half_model(half_model) -> None:
    model = half_model
    assert model.model_half
    sr = model.model_config["sample_rate"]
    init = sine_wave(HALF_SECONDS, sr, device=str(model.device), half=False)
    assert init.dtype == torch.float32
    audio = model.generate(
        prompt="funky bass groove",
        duration=HALF_SECONDS,
        steps=HALF_STEPS,
        init_audio=(sr, init),
        init_noise_level=0.8,
        seed=2,
    )
    assert_audio_valid(audio, HALF_SECONDS, sr)
    assert audio.dtype == torch.float32


def test_inpaint_audio_float32_into_half_model(half_model) -> None:
    model = half_model
    sr = model.model_config["sample_rate"]
    base_audio = sine_wave(HALF_SECONDS, sr, device=str(model.device), half=False)
    audio = model.generate(
        prompt="big trumpet solo, jazz big band, 90bpm",
        duration=HALF_SECONDS,
        steps=HALF_STEPS,
        inpaint_audio=(sr, base_audio),
        inpaint_mask_start_seconds=0.1,
        inpaint_mask_end_seconds=0.35,
    )
    assert_audio_valid(audio, HALF_SECONDS, sr)


def test_batch_inference(sa3_model) -> None:
    model = sa3_model
    sr = model.model_config["sample_rate"]
    prompts = ["ocean waves", "summer breeze", "city traffic"]
    neg_prompts = ["loud background noise", "bad quality", "loud background noise"]
    durations = s([5.0, 10.0, 20.0])
    same = model.generate(prompt=prompts, negative_prompt=neg_prompts, duration=DURATION_SEC, steps=STEPS, batch_size=3)
    assert same.shape[0] == 3
    for i in range(3):
        assert_audio_valid(same[i : i + 1], DURATION_SEC, sr)
    diffs = [(same[i] - same[j]).abs().mean().item() for i, j in itertools.combinations(range(3), 2)]
    assert sum(diffs) / len(diffs) > 0.01

    kwargs = dict(
        prompt=prompts,
        negative_prompt=neg_prompts,
        duration=durations,
        steps=STEPS,
        duration_padding_sec=6,
        batch_size=3,
        seed=11,
    )
    # Deliberate difference: different durations come back as one trimmed tensor per item; the official
    # untrimmed window is truncate_output_to_duration=False.
    untrimmed = model.generate(**kwargs, truncate_output_to_duration=False)
    window = model.plan_window(durations, 6).audio_samples
    assert untrimmed.shape == (3, 2, window) and abs(window / sr - (max(durations) + 6)) < 0.15 * (max(durations) + 6)
    items = model.generate(**kwargs)
    assert [tuple(item.shape) for item in items] == [(2, int(d * sr)) for d in durations]
    for item, full in zip(items, untrimmed):
        assert torch.equal(item, full[:, : item.shape[-1]])

    shared_negative = model.generate(
        prompt=prompts,
        negative_prompt="low quality, noise",
        duration=durations,
        steps=STEPS,
        duration_padding_sec=6,
        batch_size=3,
        truncate_output_to_duration=False,
    )
    assert shared_negative.shape == (3, 2, window)


# --------------------------------------------------------------------------------------------------
# tests/test_lora.py (the official test builds a LoRA with its trainer's add_lora; the fixture LoRA was saved
# by the official code for the tiny small model)
# --------------------------------------------------------------------------------------------------


def test_lora_inference(named, fixtures_dir: Path) -> None:
    model = named("small-music", device="cpu")
    base = model.generate(prompt="drums", duration=1.0, steps=4, seed=42)
    model.load_lora([str(fixtures_dir / "loras" / "style_a_lora.safetensors")])
    try:
        audio = model.generate(prompt="drums", duration=1.0, steps=4, seed=42)
        assert isinstance(audio, torch.Tensor) and audio.ndim == 3 and audio.shape[0] == 1 and audio.shape[-1] > 0
        assert not torch.equal(audio, base)
        model.set_lora_strength(0.0)  # "Disable without unloading"
        assert torch.equal(model.generate(prompt="drums", duration=1.0, steps=4, seed=42), base)
    finally:
        model.unload_lora()


# --------------------------------------------------------------------------------------------------
# tests/test_autoencoder.py
# --------------------------------------------------------------------------------------------------


def test_encode_decode(autoencoder) -> None:
    ae = autoencoder
    channels = ae.autoencoder.io_channels
    audio = sine_wave(2, ae.sample_rate, channels=channels, device=str(ae.device))
    latents = ae.encode(audio, ae.sample_rate)
    recon = ae.decode(latents)
    frames = -(-audio.shape[-1] // ae.autoencoder.downsampling_ratio)
    assert latents.shape[:2] == (1, 256) and latents.shape[-1] in (frames, frames + 1)  # SAME-S: even lengths
    assert recon.shape == (1, channels, latents.shape[-1] * ae.autoencoder.downsampling_ratio)
    assert torch.isfinite(recon).all()
    # The same clip as a batch, in a list, and preprocessed by hand: the same latents.
    assert torch.equal(ae.encode(audio[None], ae.sample_rate), latents)
    assert torch.equal(ae.encode([audio], [ae.sample_rate]), latents)
    assert torch.equal(
        ae.autoencoder.encode(ae.autoencoder.preprocess_audio_for_encoder(audio, ae.sample_rate)), latents
    )


@pytest.mark.parametrize("name,model", [("same-s", "tiny-small"), ("same-l", "tiny-medium")])
def test_encode_decode_reproduce_the_official_autoencoder(
    name: str, model: str, hub_cache: Path, fixtures_dir: Path
) -> None:
    """The golden SAME outputs of the official code (components fixture), chunked and not, through the names."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
        ae = AutoencoderModel.from_pretrained(name, device="cpu")
    golden = load_file(fixtures_dir / "components" / f"{model}.safetensors")
    chunking = json.loads((fixtures_dir / "components" / f"{model}.json").read_text())["same_chunking"]
    chunk = dict(chunk_size=chunking["chunk_size_latents"], overlap=chunking["overlap_latents"])
    assert relative_l2(ae.encode(golden["same.waveform"][0], 44100), golden["same.latents"]) <= TOLERANCE
    assert (
        relative_l2(ae.encode(golden["same.waveform"], 44100, chunked=True, **chunk), golden["same.latents_chunked"])
        <= TOLERANCE
    )
    assert relative_l2(ae.decode(golden["same.latents"]), golden["same.decoded"]) <= TOLERANCE
    assert (
        relative_l2(ae.decode(golden["same.latents"], chunked=True, **chunk), golden["same.decoded_chunked"])
        <= TOLERANCE
    )


def test_preprocess_for_encoder(autoencoder) -> None:
    ae = autoencoder
    channels = ae.autoencoder.io_channels
    input_sr = ae.sample_rate // 2
    audio = sine_wave(2, input_sr, channels=channels)
    batch = ae.autoencoder.preprocess_audio_for_encoder(audio, in_sr=input_sr)
    assert batch.ndim == 3 and batch.shape[:2] == (1, channels)
    assert batch.shape[2] % ae.autoencoder.downsampling_ratio == 0
    import torchaudio.functional as AF

    resampled = AF.resample(audio, input_sr, ae.sample_rate)
    assert torch.equal(batch[0, :, : resampled.shape[-1]], resampled)
    assert batch.shape[2] - resampled.shape[-1] < ae.autoencoder.downsampling_ratio
    assert not batch[0, :, resampled.shape[-1] :].any()  # zero padding
    mono = ae.autoencoder.preprocess_audio_for_encoder(audio[0], in_sr=input_sr)  # (T,): duplicated to stereo
    assert torch.equal(mono[0, 0], mono[0, 1]) and torch.equal(mono[0, 0], batch[0, 0])


def test_preprocess_list_for_encoder(autoencoder) -> None:
    ae = autoencoder
    channels = ae.autoencoder.io_channels
    clip_a = sine_wave(1, ae.sample_rate, channels=channels)
    clip_b = sine_wave(2, ae.sample_rate, channels=channels)
    batch = ae.autoencoder.preprocess_audio_list_for_encoder([clip_a, clip_b], in_sr_list=ae.sample_rate)
    assert batch.ndim == 3 and batch.shape[:2] == (2, channels)
    assert batch.shape[2] % ae.autoencoder.downsampling_ratio == 0
    assert torch.equal(batch[0, :, : clip_a.shape[-1]], clip_a) and not batch[0, :, clip_a.shape[-1] :].any()
    assert torch.equal(batch[1, :, : clip_b.shape[-1]], clip_b)
    with pytest.raises(ValueError, match="2 sample rates for 1 clips"):
        ae.autoencoder.preprocess_audio_list_for_encoder([clip_a], in_sr_list=[44100, 22050])


def test_chunked_encode_decode(autoencoder) -> None:
    ae = autoencoder
    audio = sine_wave(2, ae.sample_rate, channels=ae.autoencoder.io_channels, device=str(ae.device))
    latents = ae.encode(audio, ae.sample_rate, chunked=True, chunk_size=128, overlap=32)
    recon = ae.decode(latents, chunked=True, chunk_size=128, overlap=32)
    # 2 s is shorter than one 128-latent chunk: officially (and here) one pass.
    assert torch.equal(latents, ae.encode(audio, ae.sample_rate))
    assert torch.equal(recon, ae.decode(latents))


def test_latent_save_load(autoencoder, tmp_path: Path) -> None:
    ae = autoencoder
    audio = sine_wave(2, ae.sample_rate, channels=ae.autoencoder.io_channels, device=str(ae.device))
    latents = ae.encode(audio, ae.sample_rate)
    np.save(tmp_path / "latents.npy", latents[0].cpu().numpy())
    latent_tensor = torch.from_numpy(np.load(tmp_path / "latents.npy")).unsqueeze(0).to(ae.device)
    assert latent_tensor.shape == latents.shape
    assert torch.equal(ae.decode(latent_tensor), ae.decode(latents))


# --------------------------------------------------------------------------------------------------
# Golden cases through the names, with audio as torchaudio.load returns it
# --------------------------------------------------------------------------------------------------

NAME_FOR_FIXTURE = {"tiny-small": "small-music", "tiny-medium": "medium"}


@pytest.mark.parametrize("case", ["a2a_mono_22k", "inpaint_two_regions", "continuation", "lora_stack_per_index"])
def test_golden_cases_by_name_with_torchaudio_order(case: str, named, fixtures_dir: Path) -> None:
    """The official outputs, reproduced from ``from_pretrained(<name>)`` with each audio input passed as
    ``(tensor, sample_rate)`` (what ``torchaudio.load`` returns; the official docs pass that)."""
    spec = json.loads((fixtures_dir / "cases" / f"{case}.json").read_text())
    reference = load_file(fixtures_dir / "cases" / f"{case}.safetensors")
    model = named(NAME_FOR_FIXTURE[spec["model"]], device="cpu")
    kwargs = dict(spec["generate_kwargs"])
    for name, audio in spec.get("audio_inputs", {}).items():
        kwargs[name] = (reference[audio["tensor"]], audio["sample_rate"])
    if spec.get("loras"):
        model.load_lora([fixtures_dir / p for p in spec["loras"]], dora_mode="official")
    try:
        for call in spec.get("set_lora_strength_calls", []):
            model.set_lora_strength(call["strength"], lora_index=call["lora_index"])
        assert relative_l2(model.generate(**kwargs), reference["output"]) <= TOLERANCE
    finally:
        model.unload_lora()


# --------------------------------------------------------------------------------------------------
# README.md and docs/workflows/*.md Python examples (durations / 10)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def audio_file(tmp_path: Path):
    def make(seconds: float, name: str = "audio.wav", rate: int = 44100) -> Path:
        return write_wav(tmp_path / name, sine_wave(seconds, rate) * 0.5, rate)

    return make


def test_readme_text_to_audio(official_cache: Path) -> None:
    model = StableAudioModel.from_pretrained("medium")  # device: cuda -> mps -> cpu
    audio = model.generate(
        prompt="House music that encapsulates the feeling of being at a festival in the sunny "
        "weather with all your friends 124 BPM",
        duration=s(250),
        steps=FAST,
    )
    assert_audio_valid(audio, s(250), model.sample_rate)


def test_docs_text_to_audio_with_the_documented_defaults(named) -> None:
    model = named("medium")
    kwargs = dict(
        prompt="An anthemic Pop Rock instrumental that fills your head with nostalgic thoughtfulness",
        negative_prompt="poor quality",
        duration=s(30),
    )
    audio = model.generate(**kwargs, steps=8, cfg_scale=1, seed=123, batch_size=1)
    assert_audio_valid(audio, s(30), model.sample_rate)
    assert torch.equal(audio, model.generate(**kwargs, seed=123))  # "# default" is true of every one


def test_readme_audio_to_audio(named, audio_file) -> None:
    model = named("medium")
    init_audio = torchaudio_load(audio_file(s(30)))
    kwargs = dict(init_noise_level=0.9, prompt="bossa nova bassline", duration=s(30), seed=4, steps=FAST)
    audio = model.generate(init_audio=init_audio, **kwargs)
    assert_audio_valid(audio, s(30), model.sample_rate)
    waveform, sr = init_audio
    assert torch.equal(audio, model.generate(init_audio=(sr, waveform), **kwargs))  # both orders mean the same


@pytest.mark.parametrize("starts,ends", [(4.0, 8.0), ([4.0, 16.0], [8.0, 20.0]), ([2.0, 14.0], [6.0, 18.0])])
def test_readme_and_docs_inpainting(named, audio_file, starts, ends) -> None:
    model = named("medium")
    inpaint_audio = torchaudio_load(audio_file(s(30)))
    audio = model.generate(
        inpaint_audio=inpaint_audio,
        inpaint_mask_start_seconds=s(starts),
        inpaint_mask_end_seconds=s(ends),
        prompt="punchy kick drum fill",
        duration=s(30),
        steps=FAST,
    )
    assert_audio_valid(audio, s(30), model.sample_rate)


def test_docs_continuation(named, audio_file) -> None:
    """The docs' continuation of a 10 s file from 10 s to 18 s (the example leaves duration at its default; the
    scaled run asks for the 18 s it continues to)."""
    model = named("medium")
    inpaint_audio = torchaudio_load(audio_file(s(10)))
    audio = model.generate(
        inpaint_audio=inpaint_audio,
        inpaint_mask_start_seconds=s(10.0),
        inpaint_mask_end_seconds=s(18.0),
        duration=s(18),
        steps=FAST,
        prompt="A dream-like Synthpop instrumental that would accompany a dream-sequence in a surrealist movie",
    )
    assert_audio_valid(audio, s(18), model.sample_rate)


def test_docs_per_batch_customization(named, audio_file) -> None:
    model = named("medium")
    inpaint_audio = torchaudio_load(audio_file(s(30), "audio1.wav"))
    durations = [30, 25, 20, 20]
    audio = model.generate(
        inpaint_audio=inpaint_audio,
        inpaint_mask_start_seconds=s(3),
        inpaint_mask_end_seconds=s(10),
        prompt=["prompt1", "prompt2", "prompt3", "prompt4"],
        duration=s(durations),
        steps=FAST,
        cfg_scale=1,
        batch_size=4,
    )
    assert [tuple(a.shape) for a in audio] == [(2, int(s(d) * model.sample_rate)) for d in durations]


def test_docs_chunked_decoding(named) -> None:
    """On by default; off and on give the same audio (exactly with SAME-S; small-music: a cheaper SAME)."""
    model = named("small-music")
    kwargs = dict(prompt="...", duration=6.5, seed=8, steps=1)  # not scaled: the window must exceed a 128-latent chunk
    default = model.generate(**kwargs)
    assert torch.equal(model.generate(**kwargs, chunked_decode=True), default)
    assert torch.equal(model.generate(**kwargs, chunked_decode=False), default)


def test_docs_lora_inference_and_strength(named, tmp_path: Path) -> None:
    model = named("medium", device="cpu")
    parts = {"model.": model.dit, "conditioners.": model.conditioners}
    lora = write_lora(tmp_path / "lora.safetensors", parts, seed=1)
    style_a, style_b = (
        write_lora(tmp_path / "style_a.safetensors", parts, seed=2),
        write_lora(tmp_path / "style_b.safetensors", parts, seed=3),
    )
    kwargs = dict(prompt="Lo-fi boom bap meets orchestral strings 84 BPM", duration=s(10), seed=6, steps=1)
    base = model.generate(**kwargs)
    model.load_lora([str(lora)])
    try:
        full = model.generate(**kwargs)
        assert not torch.equal(full, base)
        outputs = {}
        for strength in (0.5, 1.5, 0.0):
            model.set_lora_strength(strength)
            outputs[strength] = model.generate(**kwargs)
        assert torch.equal(outputs[0.0], base)  # "Disable without unloading"
        assert len({o.sum().item() for o in outputs.values()} | {full.sum().item()}) == 4
    finally:
        model.unload_lora()
    model.load_lora([str(style_a), str(style_b)])
    try:
        model.set_lora_strength(1.0, lora_index=0)
        model.set_lora_strength(0.3, lora_index=1)
        stacked = model.generate(**kwargs)
        model.set_lora_strength(0.0, lora_index=1)
        only_a = model.generate(**kwargs)
    finally:
        model.unload_lora()
    model.load_lora([str(style_a)])
    try:
        assert torch.equal(model.generate(**kwargs), only_a)  # index 1 at 0 = style_a alone
        assert not torch.equal(stacked, only_a)
    finally:
        model.unload_lora()


def test_docs_autoencoder_workflows(official_cache: Path, audio_file, tmp_path: Path) -> None:
    ae = AutoencoderModel.from_pretrained("same-l")  # "same-s" (small), "same-l" (medium/large)
    waveform, sr = torchaudio_load(audio_file(s(20)))
    latents = ae.encode(waveform, sr)
    frames = -(-waveform.shape[-1] // 4096)
    assert latents.shape == (1, 256, frames)  # "samples // downsampling_ratio" (rounded up here: zero-padded)

    waveform_a = waveform
    waveform_b = torchaudio_load(audio_file(s(5), "b.wav", rate=22050))[0]
    batch = ae.encode([waveform_a, waveform_b], sr=[44100, 22050])
    assert batch.shape == (2, 256, frames)
    assert torch.equal(batch[:1], latents)

    audio_out = ae.decode(latents)
    assert audio_out.shape == (1, 2, frames * 4096)
    write_wav(tmp_path / "reconstructed.wav", audio_out[0].cpu().clamp(-1, 1), ae.sample_rate)

    chunked = ae.encode(
        waveform, sr, chunked=True, chunk_size=16, overlap=4
    )  # 128/32 in the docs; 16/4 fit this 2 s clip
    assert relative_l2(chunked, latents) <= 1e-5
    assert relative_l2(ae.decode(chunked, chunked=True, chunk_size=16, overlap=4), ae.decode(chunked)) <= 1e-5

    np.save(tmp_path / "latents.npy", latents[0].cpu().numpy())
    latent_tensor = torch.from_numpy(np.load(tmp_path / "latents.npy")).unsqueeze(0).to(ae.device)
    assert torch.equal(ae.decode(latent_tensor), audio_out)
