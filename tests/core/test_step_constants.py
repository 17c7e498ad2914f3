"""DiT step constants (``DiffusionTransformer.step_constants``, passed to the forward by ``GuidedModel``) and
shared RoPE tables: performance changes that must not change a single bit of the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sa3_core.config import ModelConfig
from sa3_core.dit import DiffusionTransformer
from sa3_core.layers import RotaryEmbedding, apply_rotary, rotary_tables
from sa3_core.sampling import DiTConditioning, GuidanceOptions, GuidedModel, build_schedule, sample

DIT_PREFIX = "model.model."


def _tiny_dit(fixtures_dir: Path, name: str) -> DiffusionTransformer:
    cfg = ModelConfig.from_json(fixtures_dir / name / "model_config.json")
    tensors = load_file(fixtures_dir / name / "model.safetensors")
    state = {k[len(DIT_PREFIX) :]: v for k, v in tensors.items() if k.startswith(DIT_PREFIX)}
    model = DiffusionTransformer(cfg.dit, attention_backend="sdpa")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _inputs(batch: int = 2, latents: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    padding = torch.ones(batch, latents, dtype=torch.bool)
    padding[0, latents - 3 :] = False
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
def test_passed_constants_give_identical_output_and_are_computed_once(fixtures_dir: Path, name: str) -> None:
    model = _tiny_dit(fixtures_dir, name)
    c = _inputs()
    times = [torch.tensor([0.9, 0.8]), torch.tensor([0.5, 0.4]), torch.tensor([0.1, 0.05])]
    with torch.inference_mode():
        expected = [model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"]) for t in times]
        counter = _CallCounter(model)
        constants = model.step_constants(c["cross"], c["glob"], c["local"], c["x"].shape[-1])
        got = [
            model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"], constants=constants)
            for t in times
        ]
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert counter.counts == {"to_kv": 1, "local": 1, "q": 3}  # constants once, queries every step


def test_constants_of_another_shape_are_refused(fixtures_dir: Path) -> None:
    model = _tiny_dit(fixtures_dir, "tiny-small")
    c = _inputs()
    t = torch.tensor([0.7, 0.3])
    with torch.inference_mode():
        shorter = model.step_constants(c["cross"], c["glob"], c["local"][..., :-1], c["x"].shape[-1] - 1)
        single = model.step_constants(c["cross"][:1], c["glob"][:1], c["local"][:1], c["x"].shape[-1])
        for constants in (shorter, single):
            with pytest.raises(ValueError, match="step constants"):
                model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"], constants=constants)


def test_guided_sampling_computes_constants_once_per_variant_and_is_bit_identical(fixtures_dir: Path) -> None:
    # The sampler's real call pattern: batched CFG on a doubled batch, guidance switched off by the CFG
    # interval for the last steps (the plain and the doubled conditioning each get their own constants).
    model = _tiny_dit(fixtures_dir, "tiny-medium")
    c = _inputs()
    cond = DiTConditioning(c["cross"], c["glob"], c["local"], padding_mask=c["padding"])
    options = GuidanceOptions(cfg_scale=4.0, cfg_interval=(0.3, 1.0))
    schedule = build_schedule(6, seq_len=[12, 9])
    noise = torch.randn(c["x"].shape, generator=torch.Generator().manual_seed(3))
    counter = _CallCounter(model)
    with torch.inference_mode():
        guided = GuidedModel(model, cond, options)
        got = sample(guided, noise, schedule, sampler="pingpong", generator=torch.Generator().manual_seed(5))
        assert counter.counts == {"to_kv": 2, "local": 2, "q": 6}  # plain and doubled: once each

        def recomputing(x, t, cross, glob, local, padding_mask=None, constants=None):
            return model(x, t, cross, glob, local, padding_mask=padding_mask)  # drops the constants

        recomputing.step_constants = model.step_constants
        expected = sample(
            GuidedModel(recomputing, cond, options),
            noise,
            schedule,
            sampler="pingpong",
            generator=torch.Generator().manual_seed(5),
        )
    assert counter.counts["to_kv"] == 2 + 2 + 6  # the reference recomputed them every step
    assert torch.equal(got, expected)


def test_forgotten_constants_follow_changed_weights(fixtures_dir: Path) -> None:
    # Per-step LoRA gating changes weights between steps; the guided model is then told to forget.
    model = _tiny_dit(fixtures_dir, "tiny-small")
    c = _inputs()
    cond = DiTConditioning(c["cross"], c["glob"], c["local"], padding_mask=c["padding"])
    t = torch.tensor([0.6, 0.6])
    layer = model.transformer.layers[1]
    original = layer.cross_attn.to_kv.weight
    with torch.inference_mode():
        guided = GuidedModel(model, cond)
        before = guided(c["x"], t)
        layer.cross_attn.to_kv.weight = torch.nn.Parameter(original * 1.5, requires_grad=False)
        stale = guided(c["x"], t)
        guided.forget_constants()
        after = guided(c["x"], t)
        expected = model(c["x"], t, c["cross"], c["glob"], c["local"], padding_mask=c["padding"])
        layer.cross_attn.to_kv.weight = original
    assert torch.equal(stale, before)  # constants are kept until forgotten...
    assert torch.equal(after, expected) and not torch.equal(after, before)  # ...then follow the new weights


def test_rotary_tables_equal_angles() -> None:
    angles = RotaryEmbedding(32)(40)
    x = torch.randn(2, 3, 30, 64)  # fewer positions than the table: the last rows are used
    assert torch.equal(apply_rotary(x, rotary_tables(angles)), apply_rotary(x, angles))
    pair = rotary_tables(angles)
    assert rotary_tables(pair) is pair  # a (cos, sin) pair passes through
    cos, sin = rotary_tables(angles)
    assert torch.equal(cos, angles.cos()) and torch.equal(sin, angles.sin())
