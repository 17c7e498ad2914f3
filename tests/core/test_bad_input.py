"""Bad input never ends in a garbage success (issue 13), for the Python API; the nodes call the same checks.

Non-finite numbers, oversized batches, text the tokenizer cannot read, audio of awkward rates or many
channels, non-finite weights, LoRAs and intermediate results: each is refused with a message that says what is
wrong (before any sampling where it can be), or handled at a bounded cost, never turned into noise.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torchaudio.functional as AF
from safetensors.torch import load_file, save_file

from sa3_core import resample as resampling
from sa3_core.checkpoint import CheckpointError
from sa3_core.lora import LoRAError, validate_strength
from sa3_core.pipeline import StableAudioModel
from sa3_core.sampling import FluxShift, GuidanceOptions, LogSNRShift, shift_from_options
from sa3_core.validation import MAX_BATCH, MAX_PROMPT_CHARS
from tests.helpers import relative_l2

SR = 44100
NAN, INF = float("nan"), float("inf")
LORA_A = "style_a_lora.safetensors"
TE_FOLDER = "t5gemma-b-b-ul2"


@pytest.fixture(scope="module")
def model(fixtures_dir: Path) -> StableAudioModel:
    return StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")


class NoSampling:
    """Fails the test if the DiT runs: these requests must be refused before sampling."""

    def __init__(self, model: StableAudioModel):
        self.model = model

    def __enter__(self) -> None:
        def forward(*args, **kwargs):
            raise AssertionError("the DiT ran although the request was invalid")

        self.model.dit.forward = forward

    def __exit__(self, *exc) -> None:
        del self.model.dit.forward


def sine(seconds: float, sample_rate: int, channels: int = 2, hz: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return (0.5 * torch.sin(2 * math.pi * hz * t)).float().repeat(channels, 1)


# --------------------------------------------------------------------------------------------------
# 3. Every float input is finite
# --------------------------------------------------------------------------------------------------

NON_FINITE = {
    "cfg_scale NaN": dict(cfg_scale=NAN),
    "cfg_scale inf": dict(cfg_scale=INF),
    "apg_scale NaN": dict(cfg_scale=3.0, apg_scale=NAN),
    "scale_phi NaN": dict(cfg_scale=3.0, scale_phi=NAN),
    "cfg_norm_threshold inf": dict(cfg_scale=3.0, cfg_norm_threshold=INF),
    "cfg_interval NaN": dict(cfg_scale=3.0, cfg_interval=(NAN, 1.0)),
    "duration_padding_sec inf": dict(duration_padding_sec=INF),
    "duration_padding_sec NaN": dict(duration_padding_sec=NAN),
    "duration inf": dict(duration=INF),
    "init_noise_level NaN": dict(init_audio=(SR, sine(1.0, SR)), init_noise_level=NAN),
    "flux shift NaN": dict(dist_shift={"type": "flux", "alpha_min": NAN, "alpha_max": 2.0}),
    "logsnr shift inf": dict(dist_shift={"type": "logsnr", "rate": INF}),
    "full shift NaN": dict(dist_shift={"type": "full", "base_shift": NAN}),
    "inpaint region NaN": dict(
        inpaint_audio=(SR, sine(2.0, SR)), inpaint_mask_start_seconds=NAN, inpaint_mask_end_seconds=1.0
    ),
    "inpaint mask NaN": dict(inpaint_audio=(SR, sine(2.0, SR)), inpaint_mask=torch.full((1, 2 * SR), NAN)),
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_non_finite_numbers_are_refused_before_sampling(case: str, model: StableAudioModel) -> None:
    kwargs = dict(prompt="piano", duration=2.0, steps=2, seed=1) | NON_FINITE[case]
    with NoSampling(model), pytest.raises(ValueError, match="finite|NaN|got nan"):
        model.generate(**kwargs)


def test_guidance_and_shift_settings_are_checked_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="cfg_scale must be a finite number, got nan"):
        GuidanceOptions(cfg_scale=NAN)
    with pytest.raises(ValueError, match="cfg_interval must be a \\(low, high\\) pair"):
        GuidanceOptions(cfg_interval=(0.0,))
    with pytest.raises(ValueError, match="distribution shift alpha_max must be a finite number"):
        FluxShift(alpha_max=INF)
    with pytest.raises(ValueError, match="distribution shift anchor_logsnr"):
        LogSNRShift(anchor_logsnr=NAN)
    with pytest.raises(ValueError, match="distribution shift alpha_min must be a finite number, got '2'"):
        shift_from_options({"type": "flux", "alpha_min": "2"})


@pytest.mark.parametrize("strength", [NAN, INF, -INF, "1", True])
def test_lora_strength_must_be_a_finite_number(strength) -> None:
    with pytest.raises(LoRAError, match="strength must be a finite number"):
        validate_strength(strength)


# --------------------------------------------------------------------------------------------------
# 5. The batch limit holds however the batch is formed
# --------------------------------------------------------------------------------------------------

TOO_MANY = MAX_BATCH + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_size=TOO_MANY),
        dict(prompt=["piano"] * TOO_MANY, batch_size=TOO_MANY),
        dict(conditioning=[{"prompt": "piano", "seconds_total": 1.0}] * TOO_MANY),
    ],
    ids=["batch_size", "prompt list", "conditioning dicts"],
)
def test_generate_refuses_batches_above_the_maximum(kwargs, model: StableAudioModel) -> None:
    with NoSampling(model), pytest.raises(ValueError, match=f"{TOO_MANY} items, more than the {MAX_BATCH}"):
        model.generate(**({"prompt": "piano", "duration": 1.0, "steps": 1, "seed": 1} | kwargs))


def test_stage_methods_refuse_batches_above_the_maximum(model: StableAudioModel, monkeypatch) -> None:
    assert model.plan_window([1.0] * MAX_BATCH).batch_size == MAX_BATCH
    with pytest.raises(ValueError, match=f"batch: {TOO_MANY} items"):
        model.plan_window([1.0] * TOO_MANY)
    monkeypatch.setattr(model.text_encoder, "encode", lambda prompts: pytest.fail("encoded an oversized batch"))
    with pytest.raises(ValueError, match=f"prompts: {TOO_MANY} items"):
        model.encode_prompts(["piano"] * TOO_MANY, [1.0] * TOO_MANY)


# --------------------------------------------------------------------------------------------------
# 7, 8. Prompt text: valid Unicode, bounded, and a warning when the encoder cuts it
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, where",
    [
        (dict(prompt="piano \ud800 drums"), r"prompt\[0\]"),
        (dict(prompt=["piano", "x\udfff"], batch_size=2), r"prompt\[1\]"),
        (dict(negative_prompt="noise \udc00", cfg_scale=3.0), r"negative_prompt\[0\]"),
        (dict(conditioning=[{"prompt": "\ud83d", "seconds_total": 1.0}]), r"prompt\[0\]"),
    ],
    ids=["prompt", "prompt list", "negative prompt", "conditioning dict"],
)
def test_lone_surrogates_are_refused_with_a_clear_message(kwargs, where: str, model: StableAudioModel) -> None:
    with NoSampling(model), pytest.raises(ValueError, match=f"{where} is not valid text: .*lone UTF-16 surrogate"):
        model.generate(**({"prompt": "piano", "duration": 1.0, "steps": 1, "seed": 1} | kwargs))
    with pytest.raises(ValueError, match="lone UTF-16 surrogate"):
        model.encode_prompts(["ok \ud800"], [1.0])


def test_prompt_length_is_capped(model: StableAudioModel) -> None:
    with NoSampling(model), pytest.raises(ValueError, match=f"more than the {MAX_PROMPT_CHARS} allowed"):
        model.generate(prompt="a" * (MAX_PROMPT_CHARS + 1), duration=1.0, steps=1, seed=1)


def test_a_prompt_cut_by_the_encoder_is_reported_once(model: StableAudioModel, caplog) -> None:
    model.text_encoder.clear_cache()
    caplog.set_level(logging.WARNING, logger="sa3_core.t5gemma")
    model.encode_prompts(["piano"], [1.0])
    model.encode_prompts([" ".join(["piano"] * 256)], [1.0])  # exactly the 256 tokens the encoder reads
    assert caplog.records == []
    long_prompt = " ".join(["drums"] * 300)
    model.encode_prompts([long_prompt], [1.0])
    model.encode_prompts([long_prompt], [1.0])  # the same prompt again: encoded once (cached), told once
    (record,) = caplog.records
    assert "300 tokens" in record.getMessage() and "256 tokens" in record.getMessage()


# --------------------------------------------------------------------------------------------------
# 2, 8. Input audio: sane rates, bounded resampling cost, extra channels said
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [999, 384_001, 10**9, 0, 2.5])
def test_absurd_sample_rates_are_refused(rate, model: StableAudioModel) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        model.prepare_audio((rate, torch.zeros(2, 1000)), model.plan_window([1.0]))


@pytest.fixture
def filter_bank_guard(monkeypatch):
    """Fail if torchaudio's resample is asked for a filter bank above the bound (4001 Hz: 177 M elements,
    0.7 GB; 44101 Hz: 1.9 G, 7.8 GB); record the input lengths it sees."""
    real = AF.resample
    lengths = []

    def guarded(waveform, orig_freq, new_freq, *args, **kwargs):
        gcd = math.gcd(orig_freq, new_freq)
        orig, new = orig_freq // gcd, new_freq // gcd
        width = math.ceil(6 * orig / (min(orig, new) * 0.99))
        assert new * (orig + 2 * width) <= 1 << 21, f"a {new} x {orig + 2 * width} filter bank"
        lengths.append(waveform.shape[-1])
        return real(waveform, orig_freq, new_freq, *args, **kwargs)

    monkeypatch.setattr(AF, "resample", guarded)
    return lengths


@pytest.mark.parametrize("rate", [4001, 44101, 11111, 383_999])
def test_awkward_rates_resample_correctly_at_a_bounded_cost(
    rate: int, model: StableAudioModel, filter_bank_guard
) -> None:
    window = model.plan_window([2.0])
    prepared = model.prepare_audio((rate, sine(2.0, rate, hz=440.0)), window)
    expected = sine(2.0, SR, hz=440.0)  # the same tone sampled at 44.1 kHz
    middle = slice(2000, 2 * SR - 2000)  # away from the clip's edges, where the filter sees the zero padding
    assert (prepared[0][:, middle] - expected[:, middle]).abs().max() < 2e-3
    assert torch.count_nonzero(prepared[0][:, 2 * SR + 100 :]) == 0


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 32000, 48000, 88200, 96000, 192000, 384000])
def test_common_rates_keep_torchaudio_exactly(rate: int) -> None:
    clip = torch.randn(2, rate // 10, generator=torch.Generator().manual_seed(rate))
    assert torch.equal(resampling.resample(clip, rate, SR), AF.resample(clip, rate, SR))


@pytest.mark.parametrize("orig, new", [(3001, 7919), (7919, 3001), (1009, 44100)])
def test_direct_evaluation_is_torchaudios_interpolation(orig: int, new: int) -> None:
    """Both computed in float64 (torchaudio's own float32 path rounds its filter positions, ~1e-5)."""
    clip = torch.randn(2, 3000, dtype=torch.float64, generator=torch.Generator().manual_seed(orig))
    direct, reference = resampling.sinc_resample(clip, orig, new), AF.resample(clip, orig, new)
    assert direct.shape == reference.shape
    assert relative_l2(direct, reference) < 1e-10


def test_a_long_clip_is_cut_to_the_window_before_resampling(model: StableAudioModel, filter_bank_guard) -> None:
    window = model.plan_window([2.0])
    clip = torch.randn(2, 60 * 48000, generator=torch.Generator().manual_seed(3)) * 0.1
    prepared = model.prepare_audio((48000, clip), window)
    assert filter_bank_guard == [resampling.input_samples_needed(window.audio_samples, 48000, SR)]
    assert filter_bank_guard[0] < 10 * 48000  # the window (2 s + padding), not the 60 s clip
    whole = AF.resample(clip, 48000, SR)[:, : window.audio_samples]
    assert torch.allclose(prepared[0], whole, atol=1e-6)


def test_extra_channels_are_dropped_as_the_official_code_does_and_said(model: StableAudioModel, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="sa3_core.audio_prep")
    window = model.plan_window([1.0])
    eight = torch.randn(8, SR, generator=torch.Generator().manual_seed(8)) * 0.1
    model.prepare_audio((SR, eight[:2]), window, name="init_audio")
    assert caplog.records == []
    prepared = model.prepare_audio((SR, eight), window, name="init_audio")
    assert torch.equal(prepared, model.prepare_audio((SR, eight[:2]), window))  # front left and right kept
    (record,) = caplog.records
    assert "init_audio has 8 channels; using the first 2" in record.getMessage()


# --------------------------------------------------------------------------------------------------
# 4. Non-finite weights, LoRAs and intermediate results
# --------------------------------------------------------------------------------------------------


def _copy_with(tmp_path: Path, source: Path, edit_name: str, edit) -> Path:
    """A copy of a fixture folder (symlinks) whose ``edit_name`` safetensors file has one tensor edited."""
    folder = tmp_path / source.name
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name != edit_name.split("/")[0]:
            (folder / entry.name).symlink_to(entry)
    if "/" in edit_name:  # a file inside a sub-folder
        sub, name = edit_name.split("/")
        (folder / sub).mkdir()
        for entry in (source / sub).iterdir():
            if entry.name != name:
                (folder / sub / entry.name).symlink_to(entry)
    tensors = load_file(str(source / edit_name))
    edit(tensors)
    save_file(tensors, str(folder / edit_name))
    return folder


def test_checkpoint_with_nan_weights_is_refused_naming_file_and_tensor(fixtures_dir: Path, tmp_path: Path) -> None:
    key = "model.model.transformer.layers.0.self_attn.to_qkv.weight"
    folder = _copy_with(
        tmp_path, fixtures_dir / "tiny-small", "model.safetensors", lambda t: t[key].view(-1)[7:9].fill_(NAN)
    )
    with pytest.raises(CheckpointError, match=f"{folder}/model.safetensors: tensor {key} holds NaN"):
        StableAudioModel.from_pretrained(folder, device="cpu")


def test_text_encoder_with_infinite_weights_is_refused(fixtures_dir: Path, tmp_path: Path) -> None:
    def damage(tensors):
        name = next(k for k in tensors if k.endswith("embed_tokens.weight"))
        tensors[name][3, 5] = INF

    folder = _copy_with(tmp_path, fixtures_dir / "tiny-small", f"{TE_FOLDER}/model.safetensors", damage)
    with pytest.raises(CheckpointError, match=f"{folder}/{TE_FOLDER}: T5Gemma weight .*embed_tokens.weight holds NaN"):
        StableAudioModel.from_pretrained(folder, device="cpu")


def _lora_copy(fixtures_dir: Path, tmp_path: Path, *, tensor_edit=None, alpha=None) -> Path:
    source = fixtures_dir / "loras" / LORA_A
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    if tensor_edit is not None:
        tensor_edit(tensors)
    if alpha is not None:
        config = json.loads(metadata["lora_config"])
        metadata = {"lora_config": json.dumps(config | {"alpha": alpha})}
    path = tmp_path / "broken_lora.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def _weights(model: StableAudioModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.dit.state_dict().items()} | {
        f"c.{k}": v.clone() for k, v in model.conditioners.state_dict().items()
    }


def _assert_weights(model: StableAudioModel, expected: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(_weights(model)[k], v) for k, v in expected.items())


def test_lora_with_nan_factors_is_refused_naming_the_file(
    fixtures_dir: Path, tmp_path: Path, model: StableAudioModel
) -> None:
    def damage(tensors):
        key = next(k for k in tensors if k.endswith("lora_B"))
        tensors[key][0, 0] = NAN

    path = _lora_copy(fixtures_dir, tmp_path, tensor_edit=damage)
    before = _weights(model)
    try:
        with pytest.raises(LoRAError, match=f"{path}: .*lora_B' holds NaN or infinite values"):
            model.load_lora(path)
        _assert_weights(model, before)
    finally:
        model.unload_lora()


def test_lora_whose_merged_weights_blow_up_is_refused_and_nothing_changes(
    fixtures_dir: Path, tmp_path: Path, model: StableAudioModel
) -> None:
    before = _weights(model)
    try:
        with pytest.raises(LoRAError, match="broken_lora.*larger than 65504.*alpha/rank 2.5e\\+29"):
            model.load_lora(_lora_copy(fixtures_dir, tmp_path, alpha=1e30))
        _assert_weights(model, before)
        assert len(model.lora) == 0
        # A good LoRA still loads; a strength that blows it up is refused and the stack stays as it was.
        model.load_lora(fixtures_dir / "loras" / LORA_A)
        model.set_lora_strength(0.5)
        loaded = _weights(model)
        with pytest.raises(LoRAError, match="larger than 65504"):
            model.set_lora_strength(1e12)
        _assert_weights(model, loaded)
        assert model.lora.strength(0, "dit") == 0.5
    finally:
        model.unload_lora()
    _assert_weights(model, before)


@pytest.fixture
def broken(model: StableAudioModel):
    """Temporarily put NaN into one weight of the model (restored afterwards)."""
    saved = []

    def damage(parameter: torch.Tensor) -> None:
        saved.append((parameter, parameter.detach().clone()))
        with torch.no_grad():
            parameter.view(-1)[:4] = NAN

    yield damage
    with torch.no_grad():
        for parameter, value in saved:
            parameter.copy_(value)


def test_nan_dit_weights_fail_after_sampling_naming_the_causes(model: StableAudioModel, broken) -> None:
    broken(model.dit.get_parameter("transformer.layers.0.self_attn.to_qkv.weight"))
    with pytest.raises(ValueError, match="sampling produced NaN or infinite latents.*settings.*weights.*LoRA"):
        model.generate(prompt="piano", duration=1.0, steps=2, seed=1)


def test_nan_conditioning_fails_before_sampling(model: StableAudioModel, broken) -> None:
    broken(next(model.conditioners.parameters()))
    with NoSampling(model), pytest.raises(ValueError, match="conditioning holds NaN.*text encoder"):
        model.generate(prompt="piano", duration=1.0, steps=2, seed=1)


def test_nan_autoencoder_weights_fail_before_the_audio_is_returned(model: StableAudioModel, broken) -> None:
    latents = model.generate(prompt="piano", duration=1.0, steps=2, seed=1, return_latents=True)
    broken(next(model.autoencoder.decoder.parameters()))
    with pytest.raises(ValueError, match="decoding produced NaN or infinite audio.*autoencoder"):
        model.decode_latents(latents, model.plan_window([1.0]))
    with pytest.raises(ValueError, match="latents to decode hold NaN"):
        model.decode_latents(torch.full_like(latents, NAN), model.plan_window([1.0]))


def test_nan_init_audio_latents_fail_before_sampling(model: StableAudioModel, broken) -> None:
    broken(next(model.autoencoder.encoder.parameters()))
    with NoSampling(model), pytest.raises(ValueError, match="init audio's encoding holds NaN"):
        model.generate(
            prompt="piano", duration=1.0, steps=2, seed=1, init_audio=(SR, sine(1.0, SR)), init_noise_level=0.5
        )
