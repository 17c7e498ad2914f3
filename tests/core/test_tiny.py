"""The tiny random-weight checkpoint (sa3_core.tiny): labelled, deterministic, and sensitive everywhere.

The e2e tests run every workflow on this model and compare each FLAC with ``generate`` within 2/32768. That
only proves the nodes are wired right if a wrong seed, prompt, duration, mask region or LoRA strength changes
the decoded audio by far more than that; here each one must move the audio by more than 0.1 of its RMS (the
e2e tolerance is ~5e-4 of it). The figures are printed (``-s``) for the record.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sa3_core.pipeline import StableAudioModel
from sa3_core.tiny import TINY_LABEL, write_tiny_checkpoint

E2E_TOLERANCE = 2 / 32768  # what the e2e tests allow between a FLAC and generate (tests/e2e/test_sa3_workflows.py)
MIN_RELATIVE_CHANGE = 0.1  # of the audio RMS: ~200x the e2e tolerance at the tiny model's audio level
E2E_LORAS = ("style_a_lora.safetensors", "style_b_dora.safetensors")  # what tests/e2e loads into this model
BASE = dict(prompt="warm piano bass", duration=2.0, seed=1)


def rms(x: torch.Tensor) -> float:
    return x.float().pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-small", "small", seed=0)


@pytest.fixture(scope="module")
def model(tiny_folder: Path) -> StableAudioModel:
    return StableAudioModel.from_pretrained(tiny_folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def base_audio(model: StableAudioModel) -> torch.Tensor:
    return model.generate(**BASE)


def example_clip(seconds: float = 2.0, rate: int = 22050) -> tuple[int, torch.Tensor]:
    t = torch.arange(int(seconds * rate)) / rate
    return rate, (
        (0.3 * torch.sin(2 * math.pi * 220 * t) + 0.2 * torch.sin(2 * math.pi * 330 * t)) * torch.exp(-0.4 * t)
    )[None]


def assert_changes_audio(what: str, changed: torch.Tensor, reference: torch.Tensor) -> None:
    assert changed.shape == reference.shape
    relative = rms(changed - reference) / rms(reference)
    print(f"\ntiny model: {what} changes the audio by {relative:.3f} of its RMS ({rms(reference):.3f})")
    assert relative > MIN_RELATIVE_CHANGE, f"{what}: audio moved by only {relative:.2e} of its RMS"
    assert (changed - reference).abs().max().item() > 100 * E2E_TOLERANCE


def test_tiny_checkpoint_is_labelled(tiny_folder: Path) -> None:
    assert (tiny_folder / "TINY_RANDOM_WEIGHTS.txt").read_text().strip() == TINY_LABEL
    with safe_open(str(tiny_folder / "model.safetensors"), "pt") as f:
        assert f.metadata()["description"] == TINY_LABEL
    assert (
        json.loads((tiny_folder / "model_config.json").read_text())["model"]["diffusion"]["config"]["embed_dim"] == 128
    )


def test_tiny_checkpoint_is_deterministic_from_the_seed(tiny_folder: Path, tmp_path: Path) -> None:
    state = torch.random.get_rng_state()
    again = load_file(write_tiny_checkpoint(tmp_path / "again", "small", seed=0) / "model.safetensors")
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    first = load_file(tiny_folder / "model.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    encoder = "t5gemma-b-b-ul2/model.safetensors"
    assert load_file(tmp_path / "again" / encoder).keys() == load_file(tiny_folder / encoder).keys()
    assert all(
        torch.equal(a, b)
        for a, b in zip(load_file(tmp_path / "again" / encoder).values(), load_file(tiny_folder / encoder).values())
    )
    other = load_file(write_tiny_checkpoint(tmp_path / "other", "small", seed=1) / "model.safetensors")
    key = "model.model.transformer.project_out.weight"
    assert not torch.equal(other[key], first[key])


def test_tiny_audio_follows_the_seed(model: StableAudioModel, base_audio: torch.Tensor) -> None:
    assert_changes_audio("seed 1 -> 2", model.generate(**{**BASE, "seed": 2}), base_audio)


def test_tiny_audio_follows_the_prompt(model: StableAudioModel, base_audio: torch.Tensor) -> None:
    assert_changes_audio("another prompt", model.generate(**{**BASE, "prompt": "dark techno drums"}), base_audio)


def test_tiny_audio_follows_the_duration(model: StableAudioModel, base_audio: torch.Tensor) -> None:
    longer = model.generate(**{**BASE, "duration": 2.5})
    assert_changes_audio("duration 2 s -> 2.5 s (first 2 s)", longer[..., : base_audio.shape[-1]], base_audio)


def test_tiny_audio_follows_the_inpaint_region(model: StableAudioModel) -> None:
    request = dict(BASE, inpaint_audio=example_clip())
    first = model.generate(**request, inpaint_mask_start_seconds=0.5, inpaint_mask_end_seconds=1.0)
    moved = model.generate(**request, inpaint_mask_start_seconds=1.0, inpaint_mask_end_seconds=1.5)
    assert_changes_audio("inpaint region 0.5-1.0 s -> 1.0-1.5 s", moved, first)


def test_tiny_audio_follows_the_lora_strengths(
    model: StableAudioModel, base_audio: torch.Tensor, fixtures_dir: Path
) -> None:
    # The e2e LoRAs (made for the first golden set's tiny-small, which has the same DiT and conditioner shapes):
    # they must load (the stack checks every tensor's shape) and each strength must matter.
    model.load_lora([fixtures_dir / "loras" / name for name in E2E_LORAS])
    try:
        model.set_lora_strength(0.0)
        assert torch.equal(model.generate(**BASE), base_audio)
        model.set_lora_strength(1.0, lora_index=0)
        first = model.generate(**BASE)
        assert_changes_audio("LoRA style_a strength 0 -> 1", first, base_audio)
        model.set_lora_strength(0.5, lora_index=1, target="dit")
        assert_changes_audio("LoRA style_b (DoRA) DiT strength 0 -> 0.5", model.generate(**BASE), first)
    finally:
        model.unload_lora()


def test_tiny_dit_velocity_follows_the_timestep(model: StableAudioModel) -> None:
    # The first golden set's DiT moved by ~1e-4 between t = 0.1 and 0.9, so a t x 1000 regression went unseen.
    window = model.plan_window([2.0])
    noise, _ = model.initial_noise(window, seed=0)
    cond = model.dit_conditioning(model.encode_prompts(["warm piano"], [2.0]), window)
    with torch.no_grad():

        def velocity(t: float) -> torch.Tensor:
            return model.dit(
                noise, torch.tensor([t]), cond.cross_attn_cond, cond.global_cond, cond.local_add_cond, cond.padding_mask
            )

        middle = velocity(0.5)
        for t in (0.1, 0.9, 500.0):
            assert rms(velocity(t) - middle) / rms(middle) > 0.3, t
