"""DiT step-constant reuse (``DiffusionTransformer.reuse_step_constants``) and shared RoPE tables:
performance changes that must not change a single bit of the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sa3_core.config import ModelConfig
from sa3_core.dit import DiffusionTransformer
from sa3_core.layers import apply_rotary, rotary_tables, RotaryEmbedding
from sa3_core.sampling import DiTConditioning, GuidanceOptions, GuidedModel, build_schedule, sample

DIT_PREFIX = "model.model."


def _tiny_dit(fixtures_dir: Path, name: str) -> DiffusionTransformer:
    cfg = ModelConfig.from_json(fixtures_dir / name / "model_config.json")
    tensors = load_file(fixtures_dir / name / "model.safetensors")
    state = {k[len(DIT_PREFIX):]: v for k, v in tensors.items() if k.startswith(DIT_PREFIX)}
    model = DiffusionTransformer(cfg.dit, attention_backend="sdpa")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _inputs(batch: int = 2, latents: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    padding = torch.ones(batch, latents, dtype=torch.bool)
    padding[0, latents - 3:] = False
    return dict(
        x=torch.randn(batch, 256, latents, generator=g),
        cross=torch.randn(batch, 257, 768, generator=g),
        glob=torch.randn(batch, 768, generator=g),
        local=torch.randn(batch, 257, latents, generator=g),
        padding=padding,
    )


class _CallCounter:
    """Counts forward calls of the step-invariant modules (to_kv of layer 0 and to_local_embed of layer 0)."""

    def __init__(self, model: DiffusionTransformer):
        self.counts = {"to_kv": 0, "local": 0, "q": 0}
        layer = model.transformer.layers[0]
        layer.cross_attn.to_kv.register_forward_hook(lambda *a: self._hit("to_kv"))
        layer.to_local_embed.register_forward_hook(lambda *a: self._hit("local"))
        layer.cross_attn.to_q.register_forward_hook(lambda *a: self._hit("q"))

    def _hit(self, key: str) -> None:
        self.counts[key] += 1


@pytest.mark.parametrize("name", ["tiny-small", "tiny-medium"])
def test_reused_constants_give_identical_output_and_are_computed_once(fixtures_dir: Path, name: str) -> None:
    model = _tiny_dit(fixtures_dir, name)
    c = _inputs()
    times = [torch.tensor([0.9, 0.8]), torch.tensor([0.5, 0.4]), torch.tensor([0.1, 0.05])]
    with torch.inference_mode():
        expected = [model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"]) for t in times]
        counter = _CallCounter(model)
        with model.reuse_step_constants():
            got = [model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"]) for t in times]
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert counter.counts == {"to_kv": 1, "local": 1, "q": 3}  # constants once, queries every step
    assert model._step_cache is None  # freed on exit


def test_new_conditioning_objects_are_not_confused(fixtures_dir: Path) -> None:
    model = _tiny_dit(fixtures_dir, "tiny-small")
    a, b = _inputs(seed=0), _inputs(seed=1)
    t = torch.tensor([0.7, 0.3])
    with torch.inference_mode():
        expected_b = model(b["x"], t, b["cross"], b["glob"], b["local"], padding_mask=b["padding"])
        expected_none = model(b["x"], t, b["cross"], b["glob"], None, padding_mask=b["padding"])
        with model.reuse_step_constants():
            model(a["x"], t, a["cross"], a["glob"], a["local"], padding_mask=a["padding"])
            got_b = model(b["x"], t, b["cross"], b["glob"], b["local"], padding_mask=b["padding"])
            got_none = model(b["x"], t, b["cross"], b["glob"], None, padding_mask=b["padding"])
    assert torch.equal(got_b, expected_b)
    assert torch.equal(got_none, expected_none)


def test_weight_changes_inside_the_scope_are_seen(fixtures_dir: Path) -> None:
    # Per-step LoRA gating swaps weight Parameters (or updates them in place) between steps.
    model = _tiny_dit(fixtures_dir, "tiny-small")
    c = _inputs()
    t = torch.tensor([0.6, 0.6])
    layer = model.transformer.layers[1]
    original = layer.cross_attn.to_kv.weight
    swapped = torch.nn.Parameter(original * 1.5, requires_grad=False)
    bias = layer.to_local_embed[0].bias
    saved_bias = bias.detach().clone()

    def run() -> torch.Tensor:
        return model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"])

    with torch.inference_mode():
        before = run()
        layer.cross_attn.to_kv.weight = swapped
        after_swap = run()
        bias.add_(0.25)
        after_inplace = run()
        bias.copy_(saved_bias)
        layer.cross_attn.to_kv.weight = original

        with model.reuse_step_constants():
            assert torch.equal(run(), before)
            layer.cross_attn.to_kv.weight = swapped
            assert torch.equal(run(), after_swap)
            bias.add_(0.25)
            assert torch.equal(run(), after_inplace)
            bias.copy_(saved_bias)
            layer.cross_attn.to_kv.weight = original
            assert torch.equal(run(), before)
    assert not torch.equal(before, after_swap) and not torch.equal(after_swap, after_inplace)


def test_guided_sampling_is_bit_identical_with_reuse(fixtures_dir: Path) -> None:
    # The sampler's real call pattern: batched CFG on a doubled batch, guidance switched off by the CFG
    # interval for the last steps (two different conditioning sets alternate in the cache).
    model = _tiny_dit(fixtures_dir, "tiny-medium")
    c = _inputs()
    cond = DiTConditioning(c["cross"], c["glob"], c["local"], padding_mask=c["padding"])
    options = GuidanceOptions(cfg_scale=4.0, cfg_interval=(0.3, 1.0))
    schedule = build_schedule(6, seq_len=[12, 9])
    noise = torch.randn(c["x"].shape, generator=torch.Generator().manual_seed(3))

    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(5)
        return sample(GuidedModel(model, cond, options), noise, schedule, sampler="pingpong", generator=generator)

    with torch.inference_mode():
        expected = run()
        with model.reuse_step_constants():
            got = run()
    assert torch.equal(got, expected)


def test_rotary_tables_equal_angles() -> None:
    angles = RotaryEmbedding(32)(40)
    x = torch.randn(2, 3, 30, 64)  # fewer positions than the table: the last rows are used
    assert torch.equal(apply_rotary(x, rotary_tables(angles)), apply_rotary(x, angles))
    pair = rotary_tables(angles)
    assert rotary_tables(pair) is pair  # a (cos, sin) pair passes through
    cos, sin = rotary_tables(angles)
    assert torch.equal(cos, angles.cos()) and torch.equal(sin, angles.sin())
