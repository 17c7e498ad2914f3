"""generate(lora_configs=...): the official per-step LoRA gating, against hand-computed references.

Official semantics (``DiffusionTransformer.forward``): before each DiT forward, for each entry
``{"lora_index": i, "interval": (lo, hi), "layer_filter": f}``, LoRA ``i`` is enabled when
``lo <= t[0] <= hi`` (item 0's t, float32), except on DiT modules whose name contains an entry of ``f``;
otherwise disabled. Only the DiT is gated; LoRAs no entry names are left as they are (on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sa3_core.lora import LoRAError
from sa3_core.pipeline import StableAudioModel

LORA_A = "loras/style_a_lora.safetensors"
LORA_B = "loras/style_b_dora.safetensors"
REQUEST = dict(prompt="piano drums", duration=2.0, steps=4, seed=3, return_latents=True)  # t: 1, .98, .89, .51


@pytest.fixture(scope="module")
def model(fixtures_dir: Path):
    model = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
    yield model
    model.unload_lora()


@pytest.fixture
def loaded(model: StableAudioModel, fixtures_dir: Path):
    def load(*names: str) -> StableAudioModel:
        model.load_lora([fixtures_dir / n for n in names])
        return model

    yield load
    model.unload_lora()


def per_step_strengths(model: StableAudioModel, strength_at) -> torch.utils.hooks.RemovableHandle:
    """The reference: a hook that sets the DiT strength of each LoRA by hand before every DiT forward.
    ``strength_at(t0) -> {lora_index: strength}``. It also drops the step constants the sampler passes in
    (computed once, from the weights before the first step), so the DiT computes them from this step's weights."""

    def hook(module, args, kwargs):
        for index, strength in strength_at(float(args[1][0].float())).items():
            model.set_lora_strength(strength, lora_index=index, target="dit")
        return args, {k: v for k, v in kwargs.items() if k != "constants"}

    return model.dit.register_forward_pre_hook(hook, with_kwargs=True)


def test_an_interval_gates_the_steps_outside_it(loaded) -> None:
    model = loaded(LORA_A)
    ungated = model.generate(**REQUEST)
    gated = model.generate(**REQUEST, lora_configs=[{"lora_index": 0, "interval": (0.9, 1.0)}])
    handle = per_step_strengths(model, lambda t: {0: 1.0 if 0.9 <= t <= 1.0 else 0.0})
    try:
        reference = model.generate(**REQUEST)
    finally:
        handle.remove()
        model.set_lora_strength(1.0)
    model.set_lora_strength(0.0, target="dit")
    dit_off = model.generate(**REQUEST)
    model.set_lora_strength(1.0)
    assert torch.equal(gated, reference)
    assert (gated - ungated).abs().max() > 1e-3 and (gated - dit_off).abs().max() > 1e-3
    assert torch.equal(model.generate(**REQUEST), ungated)  # every LoRA is on again afterwards


def test_no_gates_and_a_full_interval_change_nothing(loaded) -> None:
    model = loaded(LORA_A)
    ungated = model.generate(**REQUEST)
    assert torch.equal(model.generate(**REQUEST, lora_configs=[]), ungated)
    assert torch.equal(model.generate(**REQUEST, lora_configs=[{"lora_index": 0}]), ungated)  # default (0, 1)


def test_only_the_named_lora_is_gated(loaded) -> None:
    model = loaded(LORA_A, LORA_B)
    gated = model.generate(**REQUEST, lora_configs=[{"lora_index": 1, "interval": (0.0, 0.95)}])
    handle = per_step_strengths(model, lambda t: {1: 1.0 if t <= 0.95 else 0.0})
    try:
        reference = model.generate(**REQUEST)
    finally:
        handle.remove()
        model.set_lora_strength(1.0)
    assert torch.equal(gated, reference)
    assert not torch.equal(gated, model.generate(**REQUEST))


def test_a_layer_filter_switches_off_the_matching_dit_modules(
    loaded, model, fixtures_dir: Path, tmp_path: Path
) -> None:
    """Reference: the same LoRA file without the tensors of the filtered modules. The filter is lower-cased and
    its ``[a-b]`` ranges expanded, as officially."""
    with safe_open(str(fixtures_dir / LORA_A), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    kept = {k: v for k, v in tensors.items() if not k.startswith("model.transformer.layers.1.")}
    assert len(kept) < len(tensors)
    save_file(kept, str(tmp_path / "without_layer_1.safetensors"), metadata=metadata)

    model = loaded(LORA_A)
    filtered = model.generate(**REQUEST, lora_configs=[{"lora_index": 0, "layer_filter": "Transformer.Layers.[1-1]."}])
    model.unload_lora()
    model.load_lora([tmp_path / "without_layer_1.safetensors"])
    assert torch.equal(filtered, model.generate(**REQUEST))


@pytest.mark.parametrize(
    "configs,message",
    [
        ([{"lora_index": 2}], "lora_index 2 is out of range: 1 LoRA"),
        ([{"interval": (0, 1)}], "expected a dict with 'lora_index'"),
        ([{"lora_index": 0, "strength": 1}], "expected a dict with 'lora_index'"),
        ([{"lora_index": 0, "interval": (0.5,)}], "interval must be two numbers"),
        ([{"lora_index": 0, "interval": (0, float("nan"))}], "interval must be two numbers"),
        ([{"lora_index": "0"}], "lora_index must be an integer"),
        ({"lora_index": 0}, "must be a list"),
    ],
)
def test_bad_lora_configs_fail_before_sampling(loaded, configs, message) -> None:
    model = loaded(LORA_A)
    calls = []
    handle = model.dit.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(LoRAError, match=message):
            model.generate(**REQUEST, lora_configs=configs)
    finally:
        handle.remove()
    assert not calls


def test_lora_configs_without_a_lora(model) -> None:
    with pytest.raises(ValueError, match="no LoRA is loaded"):
        model.generate(**REQUEST, lora_configs=[{"lora_index": 0}])
