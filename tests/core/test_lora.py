"""sa3_core.lora: reading official LoRA files, adapter math, stacking, strengths, gating, unloading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sa3_core.conditioners import Conditioners
from sa3_core.config import ModelConfig
from sa3_core.dit import DiffusionTransformer
from sa3_core.lora import LoRAGate, LoRAStack, adaptable_weights, plan_lora_stack
from sa3_core.lora_adapter import ADAPTER_TYPES, Adapter, LoRAError, apply_adapter, effective_weight, xs_bases
from sa3_core.lora_file import expand_brackets, matches_any, module_name_to_target, read_lora_file
from tests.helpers import relative_l2

LORA_A = "loras/style_a_lora.safetensors"
LORA_B = "loras/style_b_dora.safetensors"
QKV = "transformer.layers.0.self_attn.to_qkv"
SECONDS = "seconds_total.embedder.embedding.1"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _tiny_small(fixtures_dir: Path) -> tuple[DiffusionTransformer, Conditioners]:
    """The tiny-small DiT and conditioners with their checkpoint weights (strict loads)."""
    cfg = ModelConfig.from_json(fixtures_dir / "tiny-small" / "model_config.json")
    tensors = load_file(fixtures_dir / "tiny-small" / "model.safetensors")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    dit = DiffusionTransformer(cfg.dit, attention_backend="sdpa")
    dit.load_state_dict(part("model.model."), strict=True)
    conditioners = Conditioners(cfg.conditioning)
    conditioners.load_state_dict(part("conditioner.conditioners."), strict=True)
    return dit.eval().requires_grad_(False), conditioners.eval().requires_grad_(False)


def _snapshot(*modules: nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _assert_same(snapshots: list[dict[str, torch.Tensor]], *modules: nn.Module) -> None:
    for before, module in zip(snapshots, modules):
        after = module.state_dict()
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), key


def _weight(module: nn.Module, path: str) -> torch.Tensor:
    return module.get_submodule(path).weight


def _file_tensors(fixtures_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(fixtures_dir / name), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def _write(path: Path, tensors: dict[str, torch.Tensor], config: dict | None) -> Path:
    save_file(tensors, str(path), metadata=None if config is None else {"lora_config": json.dumps(config)})
    return path


def _key(module: str, tensor: str) -> str:
    return f"{module}.parametrizations.weight.0.{tensor}"


def _random_adapter(kind: str, fan_out: int, fan_in: int, rank: int = 3, alpha: float = 5.0, seed: int = 0) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    if kind.endswith("-xs"):
        tensors["M_xs"] = torch.randn(rank, rank, generator=g)
    else:
        tensors["lora_A"] = torch.randn(rank, fan_in, generator=g) * 0.3
        tensors["lora_B"] = torch.randn(fan_out, rank, generator=g) * 0.3
    base = kind.removesuffix("-xs")
    if base == "dora-rows":
        tensors["magnitude"] = torch.rand(fan_out, generator=g) + 0.5
    elif base == "dora-cols":
        tensors["magnitude"] = torch.rand(fan_in, generator=g) + 0.5
    elif base == "bora":
        tensors["magnitude_r"] = torch.rand(fan_out, generator=g) + 0.5
        tensors["magnitude_c"] = torch.rand(fan_in, generator=g) + 0.5
    return Adapter(kind, rank, alpha / rank, **tensors)


# --------------------------------------------------------------------------------------------------
# Hand-written reference math (independent of the implementation's helpers)
# --------------------------------------------------------------------------------------------------


def _reference_bases(w0: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, _, vh = torch.linalg.svd(w0.reshape(w0.shape[0], -1).double(), full_matrices=False)
    u, v = u[:, :rank].clone(), vh[:rank].T.clone()
    for j in range(rank):  # make each U column's largest-magnitude entry positive
        if u[u[:, j].abs().argmax(), j] < 0:
            u[:, j], v[:, j] = -u[:, j], -v[:, j]
    return u, v


def _reference(w: torch.Tensor, a: Adapter, lam: float, base: torch.Tensor) -> torch.Tensor:
    """The official formulas, in float64, one adapter."""
    w2 = w.reshape(w.shape[0], -1).double()
    if a.is_xs:
        u, v = _reference_bases(base, a.rank)
        delta = u @ a.M_xs.double() @ v.T
    else:
        delta = a.lora_B.double() @ a.lora_A.double()
    v_ = w2 + a.scaling * lam * delta
    kind = a.adapter_type.removesuffix("-xs")
    if kind == "lora":
        out = v_
    elif kind == "dora-rows":
        out = torch.stack([v_[i] / (v_[i].norm() + 1e-12) * a.magnitude[i] for i in range(v_.shape[0])])
    elif kind == "dora-cols":
        out = torch.stack([v_[:, j] / (v_[:, j].norm() + 1e-12) * a.magnitude[j] for j in range(v_.shape[1])], dim=1)
    else:  # bora
        h = torch.stack([v_[i] / (v_[i].norm() + 1e-12) * a.magnitude_r[i] for i in range(v_.shape[0])])
        out = torch.stack([h[:, j] / (h[:, j].norm() + 1e-12) * a.magnitude_c[j] for j in range(h.shape[1])], dim=1)
    return out.reshape(w.shape)


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def test_read_plain_lora_fixture(fixtures_dir: Path) -> None:
    lora = read_lora_file(fixtures_dir / LORA_A)
    assert lora.name == "style_a_lora"
    assert (lora.config.rank, lora.config.alpha, lora.config.adapter_type) == (4, 4.0, "lora")
    assert lora.config.scaling == 1.0
    assert len(lora.adapters) == 31  # every Linear/Conv1d of the tiny DiT + the seconds Linear
    qkv = lora.adapters[f"model.{QKV}"]
    assert qkv.lora_A.shape == (4, 128) and qkv.lora_B.shape == (384, 4)
    assert qkv.lora_A.dtype == torch.float32  # fp16 in the file, upcast as the official fp32 params
    raw, _ = _file_tensors(fixtures_dir, LORA_A)
    assert torch.equal(qkv.lora_A, raw[_key(f"model.{QKV}", "lora_A")].float())
    assert f"conditioners.{SECONDS}" in lora.adapters


def test_read_dora_fixture(fixtures_dir: Path) -> None:
    lora = read_lora_file(fixtures_dir / LORA_B)
    assert (lora.config.rank, lora.config.alpha, lora.config.adapter_type) == (2, 2.0, "dora-rows")
    assert len(lora.adapters) == 31
    conv = lora.adapters["model.preprocess_conv"]
    assert conv.magnitude.shape == (256,) and conv.lora_A.shape == (2, 256)  # Conv1d (256, 256, 1) as 2-D


def test_module_names_map_to_targets() -> None:
    assert module_name_to_target(f"model.{QKV}") == ("dit", QKV)
    assert module_name_to_target(f"conditioners.{SECONDS}") == ("conditioner", SECONDS)
    with pytest.raises(LoRAError, match="none of the known roots"):
        module_name_to_target("pretransform.model.encoder.0")


def test_metadata_defaults_and_legacy_dora(tmp_path: Path) -> None:
    a, b = torch.randn(3, 6), torch.randn(5, 3)
    pair = {_key("model.x", "lora_A"): a, _key("model.x", "lora_B"): b}
    no_meta = read_lora_file(_write(tmp_path / "bare.safetensors", pair, None))
    assert (no_meta.config.rank, no_meta.config.alpha, no_meta.config.adapter_type) == (3, 3.0, "lora")

    cols = dict(pair, **{_key("model.x", "magnitude"): torch.rand(1, 6)})
    legacy_cols = read_lora_file(_write(tmp_path / "cols.safetensors", cols, {"adapter_type": "dora", "rank": 3}))
    assert legacy_cols.config.adapter_type == "dora-cols"
    assert legacy_cols.adapters["model.x"].magnitude.shape == (6,)  # legacy 2-D magnitude squeezed

    rows = dict(cols, **{_key("model.x", "magnitude"): torch.rand(5, 1)})
    legacy_rows = read_lora_file(_write(tmp_path / "rows.safetensors", rows, {"adapter_type": "dora", "alpha": 6}))
    assert legacy_rows.config.adapter_type == "dora-rows"
    assert legacy_rows.config.scaling == 2.0
    assert legacy_rows.adapters["model.x"].magnitude.shape == (5,)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_extensions_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"style{suffix}"
    path.write_bytes(b"\x80\x04not loaded")
    with pytest.raises(LoRAError, match=rf"style\{suffix}.*pickle"):
        read_lora_file(path)


@pytest.mark.parametrize("content,what", [(b"PK\x03\x04" + bytes(64), "zip"), (b"\x80\x04\x95" + bytes(64), "pickle")])
def test_pickle_content_refused(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "disguised.safetensors"
    path.write_bytes(content)
    with pytest.raises(LoRAError, match=rf"disguised\.safetensors: not a safetensors file.*{what}"):
        read_lora_file(path)


def test_bad_files_rejected(tmp_path: Path) -> None:
    a, b = torch.randn(2, 4), torch.randn(4, 2)
    pair = {_key("model.x", "lora_A"): a, _key("model.x", "lora_B"): b}
    with pytest.raises(LoRAError, match="unknown adapter_type 'loha'"):
        read_lora_file(_write(tmp_path / "t.safetensors", pair, {"adapter_type": "loha"}))
    with pytest.raises(LoRAError, match=r"model.x holds \['lora_A'\].*exactly"):
        read_lora_file(_write(tmp_path / "half.safetensors", {_key("model.x", "lora_A"): a}, {}))
    with pytest.raises(LoRAError, match="a 'dora-rows' adapter needs"):
        read_lora_file(_write(tmp_path / "nomag.safetensors", pair, {"adapter_type": "dora-rows"}))
    with pytest.raises(LoRAError, match="not an SA3 LoRA tensor"):
        read_lora_file(_write(tmp_path / "peft.safetensors", {"base_model.x.lora_A.weight": a}, {}))
    with pytest.raises(LoRAError, match="parametrization index 1"):
        read_lora_file(_write(tmp_path / "idx.safetensors", {"model.x.parametrizations.weight.1.lora_A": a}, {}))
    with pytest.raises(LoRAError, match="excludes"):
        read_lora_file(_write(tmp_path / "f.safetensors", pair, {"exclude": ["x"]}))
    with pytest.raises(LoRAError, match="not found"):
        read_lora_file(tmp_path / "missing.safetensors")


def test_filters_expand_brackets_like_official() -> None:
    assert expand_brackets("layers[0-2]") == ["layers0", "layers1", "layers2"]
    assert expand_brackets("a[2-1].b[0-1]") == ["a2.b0", "a2.b1", "a1.b0", "a1.b1"]
    assert expand_brackets("to_q") == ["to_q"]
    assert matches_any("transformer.layers.3.ff", ["layers.[2-4]"])
    assert not matches_any("transformer.layers.3.ff", ["layers[0-11]"])  # expands without a dot
    assert not matches_any("anything", None)


def test_include_filters_accept_matching_keys(tmp_path: Path) -> None:
    pair = {
        _key("model.transformer.layers.1.ff", "lora_A"): torch.randn(2, 4),
        _key("model.transformer.layers.1.ff", "lora_B"): torch.randn(4, 2),
    }
    lora = read_lora_file(
        _write(tmp_path / "inc.safetensors", pair, {"include": ["layers.[0-1]"], "exclude": ["to_q"]})
    )
    assert lora.config.include == ("layers.[0-1]",) and lora.config.exclude == ("to_q",)


# --------------------------------------------------------------------------------------------------
# Adapter math
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ADAPTER_TYPES)
@pytest.mark.parametrize("shape", [(7, 10), (6, 4, 3)], ids=["linear", "conv1d"])
def test_adapter_math_matches_formula(kind: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    w = torch.randn(shape)
    fan_in = w[0].numel()
    adapter = _random_adapter(kind, shape[0], fan_in)
    for lam in (1.0, 0.37, 2.5):
        got = apply_adapter(w, adapter.with_xs_bases(w), lam, dora_mode="official")
        assert got.shape == w.shape and got.dtype == w.dtype
        assert relative_l2(got, _reference(w, adapter, lam, w)) < 1e-5, (kind, lam)
    assert apply_adapter(w, adapter.with_xs_bases(w), 0.0, dora_mode="official") is w


def test_plain_lora_is_exact_sum() -> None:
    w = torch.randn(8, 5)
    a = _random_adapter("lora", 8, 5, rank=2, alpha=3.0)
    expected = w + (1.5 * 0.4) * (a.lora_B @ a.lora_A)
    assert torch.allclose(apply_adapter(w, a, 0.4), expected, rtol=0, atol=1e-6)


def test_low_precision_weights_keep_their_dtype() -> None:
    w = torch.randn(8, 6).to(torch.bfloat16)
    for kind in ("lora", "dora-rows", "bora-xs"):
        a = _random_adapter(kind, 8, 6, rank=2).with_xs_bases(w)
        got = apply_adapter(w, a, 1.0)
        assert got.dtype == torch.bfloat16
        assert relative_l2(got.float(), _reference(w.float(), a, 1.0, w.float())) < 1e-2


def test_xs_bases_are_canonical_svd() -> None:
    w = torch.randn(9, 4, 2)
    u, v = xs_bases(w, 3)
    assert u.shape == (9, 3) and v.shape == (8, 3) and u.dtype == torch.float32
    ref_u, ref_v = _reference_bases(w, 3)
    assert torch.allclose(u.double(), ref_u, atol=1e-5) and torch.allclose(v.double(), ref_v, atol=1e-5)
    assert torch.equal(u, xs_bases(w, 3)[0])  # deterministic
    assert (u.gather(0, u.abs().argmax(0, keepdim=True)) > 0).all()


def test_stack_composes_in_order() -> None:
    w = torch.randn(6, 5)
    first, second = _random_adapter("lora", 6, 5, seed=1), _random_adapter("dora-cols", 6, 5, seed=2)
    stacked = effective_weight(w, [first, second], [1.0, 1.0], dora_mode="official")
    by_hand = _reference(_reference(w, first, 1.0, w), second, 1.0, w)
    assert relative_l2(stacked, by_hand) < 1e-5
    swapped = effective_weight(w, [second, first], [1.0, 1.0], dora_mode="official")
    assert relative_l2(swapped, stacked) > 1e-3  # DoRA does not commute with LoRA
    assert effective_weight(w, [first, second], [0.0, 0.0]) is w


def test_xs_in_a_stack_uses_the_base_weight_bases() -> None:
    w = torch.randn(6, 5)
    first, xs = _random_adapter("lora", 6, 5, seed=1), _random_adapter("lora-xs", 6, 5, seed=2)
    stacked = effective_weight(w, [first, xs], [1.0, 1.0])
    by_hand = _reference(_reference(w, first, 1.0, w), xs, 1.0, w)  # bases from w, not from w + first
    assert relative_l2(stacked, by_hand) < 1e-5


@pytest.mark.parametrize("kind", ["dora-rows", "dora-cols", "bora", "dora-rows-xs", "bora-xs"])
def test_dora_strength_modes(kind: str) -> None:
    w = torch.randn(8, 6)
    a = _random_adapter(kind, 8, 6).with_xs_bases(w)
    full = apply_adapter(w, a, 1.0, dora_mode="official")
    assert torch.equal(apply_adapter(w, a, 1.0, dora_mode="linear"), full)
    for mode in ("linear", "official"):
        assert apply_adapter(w, a, 0.0, dora_mode=mode) is w
    # The official response jumps at 0: renormalising to the magnitudes applies in full at any lambda.
    tiny_official = apply_adapter(w, a, 1e-5, dora_mode="official")
    assert (tiny_official - w).norm() > 0.1 * (full - w).norm()
    # Linear: W + lambda * (W_dora(1) - W), including amplification above 1.
    for lam in (1e-5, 0.25, 0.5, 2.0):
        got = apply_adapter(w, a, lam, dora_mode="linear")
        assert torch.allclose(got, w + lam * (full - w), atol=1e-6), lam
    with pytest.raises(LoRAError, match="unknown dora_mode"):
        apply_adapter(w, a, 0.5, dora_mode="smooth")


# --------------------------------------------------------------------------------------------------
# The stack on the real tiny-small DiT and conditioners
# --------------------------------------------------------------------------------------------------


@pytest.fixture()
def model(fixtures_dir: Path) -> tuple[DiffusionTransformer, Conditioners]:
    return _tiny_small(fixtures_dir)


def test_fixture_loras_fit_the_tiny_small_model(fixtures_dir: Path, model) -> None:
    dit, cond = model
    base = _snapshot(dit, cond)
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    assert stack.load([fixtures_dir / LORA_A, fixtures_dir / LORA_B]) == ["style_a_lora", "style_b_dora"]
    linear_weights = [n for n, m in dit.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert sorted(stack.adapted_parameters("dit")) == sorted(f"{n}.weight" for n in linear_weights)
    assert stack.adapted_parameters("conditioner") == [f"{SECONDS}.weight"]
    for name in linear_weights:
        assert not torch.equal(_weight(dit, name), base[0][f"{name}.weight"]), name
    stack.unload()
    _assert_same(base, dit, cond)


def test_per_target_strength_is_exact(fixtures_dir: Path, model) -> None:
    dit, cond = model
    w_qkv, w_sec = _weight(dit, QKV).detach().clone(), _weight(cond, SECONDS).detach().clone()
    lora = read_lora_file(fixtures_dir / LORA_A)
    qkv, sec = lora.adapters[f"model.{QKV}"], lora.adapters[f"conditioners.{SECONDS}"]
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    stack.load([lora])
    stack.set_strength(0.5, target="dit")
    assert stack.strength(0, "dit") == 0.5 and stack.strength(0, "conditioner") == 1.0
    s = lora.config.scaling
    assert torch.allclose(_weight(dit, QKV), w_qkv + 0.5 * s * (qkv.lora_B @ qkv.lora_A), rtol=0, atol=1e-6)
    assert torch.allclose(_weight(cond, SECONDS), w_sec + s * (sec.lora_B @ sec.lora_A), rtol=0, atol=1e-6)
    stack.set_strength(0.0, target="conditioner")
    assert torch.equal(_weight(cond, SECONDS), w_sec)
    assert not torch.equal(_weight(dit, QKV), w_qkv)


def test_per_index_strength_and_disable(fixtures_dir: Path, model) -> None:
    dit, cond = model
    w0 = _weight(dit, QKV).detach().clone()
    a = read_lora_file(fixtures_dir / LORA_A).adapters[f"model.{QKV}"]
    b = read_lora_file(fixtures_dir / LORA_B).adapters[f"model.{QKV}"]
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    stack.load([fixtures_dir / LORA_A, fixtures_dir / LORA_B])
    assert torch.equal(_weight(dit, QKV), effective_weight(w0, [a, b], [1.0, 1.0]))
    stack.set_strength(0.3, lora_index=1)  # the lora_stack_per_index fixture case's strengths
    assert torch.equal(_weight(dit, QKV), effective_weight(w0, [a, b], [1.0, 0.3]))
    stack.set_strength(0.0, lora_index=0)
    assert torch.equal(_weight(dit, QKV), effective_weight(w0, [b], [0.3]))
    stack.set_strength(0.0)
    assert _weight(dit, QKV) is stack._slots[("dit", QKV)].original  # strength 0: the original weight itself
    stack.set_strength(2.0, lora_index=0)  # > 1 amplifies
    assert torch.allclose(_weight(dit, QKV) - w0, 2 * (effective_weight(w0, [a], [1.0]) - w0), atol=1e-6)


def test_dora_mode_switch_on_the_model(fixtures_dir: Path, model) -> None:
    dit, cond = model
    w0 = _weight(dit, QKV).detach().clone()
    b = read_lora_file(fixtures_dir / LORA_B).adapters[f"model.{QKV}"]
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    stack.load([fixtures_dir / LORA_B])
    stack.set_strength(0.3)
    assert torch.equal(_weight(dit, QKV), effective_weight(w0, [b], [0.3], dora_mode="linear"))
    stack.set_dora_mode("official")
    assert torch.equal(_weight(dit, QKV), effective_weight(w0, [b], [0.3], dora_mode="official"))


def test_unload_restores_bit_for_bit(fixtures_dir: Path, model) -> None:
    dit, cond = model
    originals = {n: p for n, p in list(dit.named_parameters()) + list(cond.named_parameters())}
    base = _snapshot(dit, cond)
    stack = LoRAStack({"dit": dit, "conditioner": cond}, dora_mode="official")
    stack.load([fixtures_dir / LORA_A, fixtures_dir / LORA_B])
    stack.set_strength(0.7, lora_index=1, target="dit")
    stack.gate(0.5, [LoRAGate(0, (0.0, 0.4))])
    stack.unload()
    _assert_same(base, dit, cond)
    current = {n: p for n, p in list(dit.named_parameters()) + list(cond.named_parameters())}
    assert all(current[n] is originals[n] for n in originals)  # the very same Parameter objects
    assert len(stack) == 0
    stack.load([fixtures_dir / LORA_A])  # reusable after unload
    assert len(stack) == 1


def test_dit_output_follows_the_lora(fixtures_dir: Path, model) -> None:
    dit, cond = model
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 256, 6, generator=g), torch.tensor([0.6])
    ctx, glob = torch.randn(1, 257, 768, generator=g), torch.randn(1, 768, generator=g)
    local = torch.randn(1, 257, 6, generator=g)
    with torch.no_grad():
        base = dit(x, t, ctx, glob, local)
        stack = LoRAStack({"dit": dit, "conditioner": cond})
        stack.load([fixtures_dir / LORA_A])
        adapted = dit(x, t, ctx, glob, local)
        stack.set_strength(0.0)
        zero = dit(x, t, ctx, glob, local)
        stack.set_strength(1.0)
        stack.unload()
        after = dit(x, t, ctx, glob, local)
    assert not torch.allclose(adapted, base)
    assert torch.equal(zero, base) and torch.equal(after, base)


def test_gating_by_interval_and_layer_filter(fixtures_dir: Path, model) -> None:
    dit, cond = model
    w_qkv, w_ff = _weight(dit, QKV).detach().clone(), _weight(dit, "transformer.layers.1.ff.ff.2").detach().clone()
    w_sec = _weight(cond, SECONDS).detach().clone()
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    stack.load([fixtures_dir / LORA_A])
    full_qkv = _weight(dit, QKV).detach().clone()
    gates = [LoRAGate(0, (0.2, 0.95), "Layers.0.self_attn")]  # filters are lower-cased, as official
    stack.gate(torch.tensor([0.95]), gates)  # 0.95 compared in float32: inside
    assert torch.equal(_weight(dit, QKV), w_qkv)  # filtered out
    assert not torch.equal(_weight(dit, "transformer.layers.1.ff.ff.2"), w_ff)
    stack.gate(0.1, gates)  # outside the interval: every DiT module off
    assert torch.equal(_weight(dit, "transformer.layers.1.ff.ff.2"), w_ff)
    assert not torch.equal(_weight(cond, SECONDS), w_sec)  # the conditioner is never gated
    stack.clear_gates()
    assert torch.equal(_weight(dit, QKV), full_qkv)
    with pytest.raises(LoRAError, match="out of range"):
        stack.gate(0.5, [LoRAGate(3)])


def test_plan_matches_the_chain_to_the_weights_and_changes_nothing(fixtures_dir: Path, model) -> None:
    """plan_lora_stack (what LoRAStack and the ComfyUI patches both use): per weight, the adapters of the chain
    in order with the strength of their LoRA on that weight's target."""
    dit, cond = model
    base = _snapshot(dit, cond)
    a, b = read_lora_file(fixtures_dir / LORA_A), read_lora_file(fixtures_dir / LORA_B)
    weights = {"dit": adaptable_weights(dit), "conditioner": adaptable_weights(cond)}
    plan = plan_lora_stack([(a, {"dit": 0.5, "conditioner": 1.0}), (b, {"dit": 1.0, "conditioner": 0.25})], weights)
    _assert_same(base, dit, cond)
    linear_weights = [n for n, m in dit.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert sorted(plan) == sorted([("dit", n) for n in linear_weights] + [("conditioner", SECONDS)])
    qkv = plan[("dit", QKV)]
    assert [(p.lora_index, p.lora_name, p.strength) for p in qkv] == [
        (0, "style_a_lora", 0.5),
        (1, "style_b_dora", 1.0),
    ]
    assert qkv[0].adapter is a.adapters[f"model.{QKV}"] and qkv[1].adapter is b.adapters[f"model.{QKV}"]
    assert [(p.lora_index, p.strength) for p in plan[("conditioner", SECONDS)]] == [(0, 1.0), (1, 0.25)]
    assert plan_lora_stack([], weights) == {}


def test_plan_errors_name_the_file(fixtures_dir: Path, model) -> None:
    dit, cond = model
    lora = read_lora_file(fixtures_dir / LORA_A)
    chain = [(lora, {"dit": 1.0, "conditioner": 1.0})]
    weights = {"dit": adaptable_weights(dit), "conditioner": adaptable_weights(cond)}
    float8 = {
        "dit": weights["dit"] | {QKV: weights["dit"][QKV].to(torch.float8_e4m3fn)},
        "conditioner": weights["conditioner"],
    }
    missing = {"dit": {k: v for k, v in weights["dit"].items() if k != QKV}, "conditioner": weights["conditioner"]}
    reshaped = {"dit": weights["dit"] | {QKV: torch.zeros(5, 7)}, "conditioner": weights["conditioner"]}
    with pytest.raises(LoRAError, match=rf"style_a_lora.safetensors: model.{QKV} stores its weight in .*float8_e4m3fn"):
        plan_lora_stack(chain, float8)
    with pytest.raises(LoRAError, match=rf"style_a_lora.safetensors: 1 LoRA module\(s\) match no .*\(model.{QKV}\)"):
        plan_lora_stack(chain, missing)
    with pytest.raises(LoRAError, match=rf"style_a_lora.safetensors: model.{QKV}: LoRA tensor lora_A has shape"):
        plan_lora_stack(chain, reshaped)
    with pytest.raises(LoRAError, match="style_a_lora.safetensors: holds conditioner tensors .* no conditioner module"):
        plan_lora_stack(chain, {"dit": weights["dit"]})


# --------------------------------------------------------------------------------------------------
# Bad requests: clear errors, raised before any weight changes
# --------------------------------------------------------------------------------------------------


def _edited_lora(fixtures_dir: Path, tmp_path: Path, edit) -> Path:
    tensors, metadata = _file_tensors(fixtures_dir, LORA_A)
    config = json.loads(metadata["lora_config"])
    edit(tensors, config)
    return _write(tmp_path / "edited.safetensors", tensors, config)


@pytest.mark.parametrize(
    "case,message",
    [
        ("index", "lora_index 2 is out of range"),
        ("negative_index", "lora_index -1 is out of range"),
        ("target", "unknown LoRA target 'vae'"),
        ("nan", "finite number"),
        ("mode", "unknown dora_mode"),
        ("adapter_type", "unknown adapter_type 'lokr'"),
        ("shape", "transformer.layers.1.self_attn.to_qkv.*another model variant"),
        ("unmatched", r"1 LoRA module\(s\) match no .*layers.7.self_attn.to_qkv"),
        ("root", "none of the known roots"),
        ("second_file_bad", "match no"),
        ("pickle", r"\.ckpt.*pickle"),
        ("moved", "outside the LoRA stack"),
    ],
)
def test_errors_leave_weights_untouched(fixtures_dir: Path, tmp_path: Path, model, case: str, message: str) -> None:
    dit, cond = model
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    stack.load([fixtures_dir / LORA_B])
    stack.set_strength(0.6)
    before = _snapshot(dit, cond)
    good = fixtures_dir / LORA_A

    def qkv_shape(tensors, config):
        key = _key("model.transformer.layers.1.self_attn.to_qkv", "lora_B")
        tensors[key] = torch.zeros(300, 4, dtype=torch.float16)

    def extra_layers(tensors, config):
        for name in ("lora_A", "lora_B"):
            tensors[_key("model.transformer.layers.7.self_attn.to_qkv", name)] = tensors[
                _key(f"model.{QKV}", name)
            ].clone()

    def moved():
        dit.get_submodule(QKV).weight.data = dit.get_submodule(QKV).weight.data.double()
        before[0][f"{QKV}.weight"] = _weight(dit, QKV).detach().clone()
        stack.set_strength(0.1)

    actions = {
        "index": lambda: stack.set_strength(0.5, lora_index=2),
        "negative_index": lambda: stack.set_strength(0.5, lora_index=-1),
        "target": lambda: stack.set_strength(0.5, target="vae"),
        "nan": lambda: stack.set_strength(float("nan")),
        "mode": lambda: stack.set_dora_mode("smooth"),
        "adapter_type": lambda: stack.load(
            [_edited_lora(fixtures_dir, tmp_path, lambda t, c: c.update(adapter_type="lokr"))]
        ),
        "shape": lambda: stack.load([good, _edited_lora(fixtures_dir, tmp_path, qkv_shape)]),
        "unmatched": lambda: stack.load([_edited_lora(fixtures_dir, tmp_path, extra_layers)]),
        "root": lambda: stack.load(
            [_write(tmp_path / "r.safetensors", {_key("pretransform.x", "lora_A"): torch.ones(1, 1)}, {})]
        ),
        "second_file_bad": lambda: stack.load([good, _edited_lora(fixtures_dir, tmp_path, extra_layers)]),
        "pickle": lambda: stack.load([good, tmp_path / "style.ckpt"]),
        "moved": moved,
    }
    with pytest.raises(LoRAError, match=message):
        actions[case]()
    _assert_same(before, dit, cond)
    assert len(stack) == 1 and stack.strength(0, "dit") == 0.6


def test_conditioner_keys_need_a_conditioner_target(fixtures_dir: Path, model) -> None:
    dit, _ = model
    before = _snapshot(dit)
    stack = LoRAStack({"dit": dit})
    with pytest.raises(LoRAError, match="no conditioner module was given"):
        stack.load([fixtures_dir / LORA_A])
    _assert_same(before, dit)


def test_xs_lora_loads_on_the_model(fixtures_dir: Path, tmp_path: Path, model) -> None:
    dit, cond = model
    w0 = _weight(dit, QKV).detach().clone()
    core = torch.randn(4, 4)
    config = {"adapter_type": "lora-xs", "rank": 4, "alpha": 8}
    path = _write(tmp_path / "xs.safetensors", {_key(f"model.{QKV}", "M_xs"): core}, config)
    stack = LoRAStack({"dit": dit, "conditioner": cond})
    stack.load([path])
    u, v = xs_bases(w0, 4)
    assert torch.allclose(_weight(dit, QKV), w0 + 2.0 * (u @ core @ v.T), atol=1e-6)
    stack.unload()
    assert torch.equal(_weight(dit, QKV), w0)
