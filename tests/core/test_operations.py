"""Loading through any ``operations``: lazily built layers (the newest ComfyUI, dynamic VRAM) and eager ones.

The lazy layers are tests/newer_comfy_ops.py: ``weight`` / ``bias`` are None until ``_load_from_state_dict``,
which keeps the tensor it is given. Shown here: the golden cases reproduced through them, the strict
refusals unchanged, eager layers in fp16 / bf16, and no weight held twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa3_core.checkpoint import (
    AUTOENCODER_PREFIX,
    CONDITIONER_PREFIX,
    DIT_PREFIX,
    CheckpointError,
    SafetensorsFile,
    build_modules,
    load_autoencoder,
    load_components,
    load_module_weights,
    module_shapes,
)
from sa3_core.config import ModelConfig
from sa3_core.pipeline import StableAudioModel
from tests.golden import TOLERANCE, case_names, run_case
from tests.helpers import FIXTURES_DIR, STRICT_DIR
from tests.newer_comfy_ops import EAGER, LAZY, disable_weight_init

OPERATIONS = {
    "torch.nn": torch.nn,
    "comfy eager": EAGER,
    "comfy lazy": disable_weight_init,
    "comfy lazy manual_cast": LAZY,
}
PARTS = {DIT_PREFIX: "dit", AUTOENCODER_PREFIX: "autoencoder", CONDITIONER_PREFIX: "conditioners"}


def test_lazy_layers_hold_nothing_before_loading(fixtures_dir: Path):
    """The emulation is the host that broke the old loader: a lazy build's state_dict lacks every Linear."""
    config = ModelConfig.from_json(fixtures_dir / "tiny-small" / "model_config.json")
    lazy = build_modules(config, device="meta", dtype=torch.float32, operations=LAZY)[DIT_PREFIX]
    plain = build_modules(config, device="meta", dtype=torch.float32)[DIT_PREFIX]
    assert lazy.transformer.project_in.weight is None and lazy.preprocess_conv.weight is None
    missing = set(module_shapes(plain)) - set(module_shapes(lazy))
    assert "transformer.project_in.weight" in missing and "preprocess_conv.weight" in missing
    assert set(module_shapes(lazy)) < set(module_shapes(plain))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", OPERATIONS)
def test_every_tensor_lands_through_any_operations(fixtures_dir: Path, name: str, dtype: torch.dtype):
    folder = fixtures_dir / "tiny-medium"
    loaded = load_components(folder, device="cpu", dtype=dtype, operations=OPERATIONS[name], load_text_encoder=False)
    tensors = load_file(str(folder / "model.safetensors"))
    assert type(loaded.dit.transformer.project_in) is OPERATIONS[name].Linear
    for prefix, part in PARTS.items():
        module = getattr(loaded, part)
        state = module.state_dict()
        assert {prefix + k for k in state} == {k for k in tensors if k.startswith(prefix)}
        for key, value in state.items():
            assert value.dtype == dtype and value.device.type == "cpu", key
            assert torch.equal(value, tensors[prefix + key].to(dtype)), key
        assert not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("name", ["torch.nn", "comfy eager", "comfy lazy"])
def test_weights_are_never_held_twice(fixtures_dir: Path, monkeypatch, name: str):
    """Built on meta (or lazily) and assigned: every module tensor is the very tensor read from the file."""
    read: list[torch.Tensor] = []
    original = SafetensorsFile.read
    monkeypatch.setattr(SafetensorsFile, "read", lambda self, key: read.append(original(self, key)) or read[-1])
    loaded = load_components(
        fixtures_dir / "tiny-small",
        device="cpu",
        dtype=torch.float32,
        operations=OPERATIONS[name],
        load_text_encoder=False,
    )
    held = [t for part in PARTS.values() for t in getattr(loaded, part).state_dict().values()]
    assert len(held) == len(read)
    storages = {t.untyped_storage().data_ptr() for t in read if t.numel()}  # empty tensors hold no memory
    assert len(storages) == sum(1 for t in read if t.numel())  # one storage each: the check below means something
    assert {t.untyped_storage().data_ptr() for t in held if t.numel()} == storages


# -- the strict refusals: the same messages through lazy layers --------------------------------------


def _message(call) -> str:
    with pytest.raises(CheckpointError) as error:
        call()
    return str(error.value)


@pytest.mark.parametrize("ops", [EAGER, LAZY], ids=["eager", "lazy"])
def test_missing_unexpected_and_wrong_shape_are_refused_the_same(fixtures_dir: Path, tmp_path: Path, ops):
    tensors = load_file(str(fixtures_dir / "tiny-small" / "model.safetensors"))
    del tensors[DIT_PREFIX + "transformer.project_in.weight"]  # a Linear weight: created lazily
    tensors[DIT_PREFIX + "transformer.layers.0.self_attn.to_qkv.weight"] = torch.zeros(3, 3)
    tensors["model.model.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))

    def load(operations):
        return lambda: load_components(
            path,
            config=fixtures_dir / "tiny-small" / "model_config.json",
            device="cpu",
            dtype=torch.float32,
            operations=operations,
        )

    message = _message(load(ops))
    assert message == _message(load(torch.nn))
    assert message.startswith(str(path)) and "1 missing, 1 unexpected, 1 wrong shape" in message
    assert "model.model.transformer.project_in.weight" in message and "model.model.extra.weight" in message
    assert "to_qkv.weight [3, 3] (expected [384, 128])" in message


@pytest.mark.parametrize("ops", [EAGER, LAZY], ids=["eager", "lazy"])
def test_wrong_variant_and_autoencoder_refusals_are_the_same(fixtures_dir: Path, ops):
    medium_weights = fixtures_dir / "tiny-medium" / "model.safetensors"
    small_config = fixtures_dir / "tiny-small" / "model_config.json"

    def variant(operations):
        return lambda: load_components(
            medium_weights, config=small_config, device="cpu", dtype=torch.float32, operations=operations
        )

    message = _message(variant(ops))
    assert message == _message(variant(torch.nn)) and "look like a medium model" in message
    small_same = ModelConfig.from_json(small_config).autoencoder

    def autoencoder(operations):
        return lambda: load_autoencoder(
            medium_weights, config=small_same, device="cpu", dtype=torch.float32, operations=operations
        )

    message = _message(autoencoder(ops))
    assert message == _message(autoencoder(torch.nn)) and "a SAME autoencoder" in message


def test_autoencoder_through_lazy_layers(fixtures_dir: Path):
    lazy = load_autoencoder(fixtures_dir / "tiny-small", device="cpu", dtype=torch.float32, operations=LAZY)
    plain = load_autoencoder(fixtures_dir / "tiny-small", device="cpu", dtype=torch.float32)
    for key, value in plain.autoencoder.state_dict().items():
        assert torch.equal(lazy.autoencoder.state_dict()[key], value), key


# -- load_module_weights with a reference build ------------------------------------------------------


class _Net(torch.nn.Module):
    def __init__(self, operations, device=None):
        super().__init__()
        self.first = operations.Linear(4, 3, device=device)
        self.second = operations.Linear(3, 2, bias=False, device=device)


def _net_tensors() -> dict[str, torch.Tensor]:
    return {"first.weight": torch.randn(3, 4), "first.bias": torch.randn(3), "second.weight": torch.randn(2, 3)}


def test_load_module_weights_needs_the_reference_for_lazy_layers():
    tensors = _net_tensors()
    with pytest.raises(CheckpointError, match=r"0 missing, 3 unexpected"):  # the old behaviour: nothing expected
        load_module_weights(_Net(LAZY), tensors, "net.safetensors")
    module = load_module_weights(_Net(LAZY), tensors, "net.safetensors", reference=_Net(torch.nn, device="meta"))
    assert torch.equal(module.first.bias, tensors["first.bias"]) and torch.equal(
        module.second.weight, tensors["second.weight"]
    )
    with pytest.raises(CheckpointError, match=r"second.weight \[2, 4\] \(expected \[2, 3\]\)"):
        load_module_weights(
            _Net(LAZY),
            {**tensors, "second.weight": torch.randn(2, 4)},
            "net.safetensors",
            reference=_Net(torch.nn, device="meta"),
        )


class _ExtraParameterLinear(torch.nn.Linear):
    """A layer wanting a tensor no checkpoint has (e.g. a quantisation scale)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = torch.nn.Parameter(torch.ones(1, device=kwargs.get("device")))


class _TransposingLinear(LAZY.Linear):
    """A lazy layer that takes its tensor and keeps something else."""

    def _load_from_state_dict(self, state_dict, prefix, *args):
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.weight = torch.nn.Parameter(self.weight.detach().t(), requires_grad=False)


@pytest.mark.parametrize(
    "linear, message",
    [(_ExtraParameterLinear, "refused the checkpoint's tensors"), (_TransposingLinear, "did not end up holding")],
)
def test_operations_that_do_not_take_the_tensors_are_reported(linear, message: str):
    operations = type("Operations", (), {"Linear": linear})
    with pytest.raises(CheckpointError, match=message):
        load_module_weights(
            _Net(operations, device="meta"),
            _net_tensors(),
            "net.safetensors",
            reference=_Net(torch.nn, device="meta"),
            device="cpu",
        )


# -- the golden cases through lazily built layers -----------------------------------------------------


# Strict-set cases for what the first set's weights hardly show: LoRA families on Linear and Conv1d weights
# (BoRA, DoRA -XS), the medium model's LoRA, the medium DiT with APG (a few only, to keep the suite fast).
STRICT_CASES = ["lora_bora_full", "lora_dora_cols_xs_full", "lora_medium_dora_rows", "t2a_medium_cfg_apg"]


@pytest.fixture(scope="module")
def lazy_models():
    """One model per (set, folder), every part built with the lazy layers (manual_cast: cast at forward)."""
    cache: dict[Path, StableAudioModel] = {}

    def get(folder: Path) -> StableAudioModel:
        if folder not in cache:
            parts = load_components(folder, device="cpu", dtype=torch.float32, operations=LAZY)
            assert type(parts.dit.transformer.project_in) is LAZY.Linear
            cache[folder] = StableAudioModel(parts, device="cpu", dtype=torch.float32)
        return cache[folder]

    return get


def _case_model(lazy_models, set_dir: Path, case: str) -> StableAudioModel:
    spec = json.loads((set_dir / "cases" / f"{case}.json").read_text())
    return lazy_models(set_dir / spec["model"])


@pytest.mark.parametrize("case", case_names(FIXTURES_DIR))
def test_golden_case_through_lazy_layers(case: str, lazy_models):
    errors = run_case(_case_model(lazy_models, FIXTURES_DIR, case), FIXTURES_DIR, case)
    assert errors.worst() <= TOLERANCE, errors


@pytest.mark.parametrize("case", STRICT_CASES)
def test_strict_golden_case_through_lazy_layers(case: str, lazy_models):
    errors = run_case(_case_model(lazy_models, STRICT_DIR, case), STRICT_DIR, case)
    assert errors.worst() <= TOLERANCE, errors
