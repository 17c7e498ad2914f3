"""The DiT timestep path and APG against the official formulas, re-derived here independently.

Read from the official ``stable_audio_3`` at 636f906 (``models/dit.py``, ``models/blocks.py``), written out again
below in plain tensor arithmetic (float64 where it helps), never imported:

* timestep (``DiffusionTransformer._forward``): ``t`` (the flow time in [0, 1], never x1000) is cast to the model
  dtype, then ``ExpoFourierFeatures(256, 0.5, 10000)``: ``f_k = exp(log 0.5 + k/127 (log 10000 - log 0.5))``,
  ``[cos(2 pi t f_k), sin(2 pi t f_k)]`` computed in float32 and cast back; then ``to_timestep_embed`` =
  Linear -> SiLU -> Linear (with biases); the result is added to ``to_global_embed(global_cond)`` and the sum
  feeds the adaLN ``global_cond_embedder``.
* APG (``DiffusionTransformer.apg_project`` and the CFG block of ``forward``): see :func:`official_apg_project`
  and :func:`official_guide`.

The tiny DiT is the strict fixtures' (its velocity changes by O(1) between t = 0.1 and 0.9), so a t x 1000,
a missing quantisation or an APG -> CFG regression is a large error here, not a rounding one.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from sa3_core import sampling as S
from sa3_core.config import ModelConfig
from sa3_core.dit import DiffusionTransformer
from tests.helpers import FIXTURES_DIR, relative_l2

STRICT_SMALL = FIXTURES_DIR / "strict" / "tiny-small"


def strict_dit(dtype: torch.dtype = torch.float32) -> DiffusionTransformer:
    cfg = ModelConfig.from_json(STRICT_SMALL / "model_config.json")
    prefix = "model.model."
    state = {
        k[len(prefix) :]: v for k, v in load_file(STRICT_SMALL / "model.safetensors").items() if k.startswith(prefix)
    }
    dit = DiffusionTransformer(cfg.dit, attention_backend="sdpa")
    dit.load_state_dict(state, strict=True)
    return dit.to(dtype).eval()


def official_timestep_features(t: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    """(B,) flow times -> (B, 256) features in the model dtype, as the official DiT computes them."""
    quantised = t.to(model_dtype).double()  # t_cond.to(x.dtype): the model dtype, before any feature
    k = torch.arange(128, dtype=torch.float64)
    freqs = torch.exp(math.log(0.5) + k / 127 * (math.log(10000.0) - math.log(0.5)))
    angles = 2 * math.pi * quantised[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(model_dtype)


def feature_tolerance(t: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    """(B, 256) bounds on the rounding of the official float32 features: the angle 2 pi t f carries a relative
    error of ~1e-6 (f is exp() of an argument up to ~10), i.e. up to ~0.05 rad at 10 kHz; an fp16 model then
    rounds the features themselves to ~5e-4."""
    k = torch.arange(128, dtype=torch.float64)
    angles = 2 * math.pi * t.double().abs()[:, None] * torch.exp(math.log(0.5) + k / 127 * math.log(20000.0))[None]
    rounding = 1e-6 if model_dtype == torch.float32 else 1e-3
    return (2e-6 * angles + rounding).repeat(1, 2)


def official_timestep_embed(dit: DiffusionTransformer, features: torch.Tensor) -> torch.Tensor:
    first, second = dit.to_timestep_embed[0], dit.to_timestep_embed[2]
    h = features.double() @ first.weight.double().T + first.bias.double()
    h = h * torch.sigmoid(h)  # SiLU
    return h @ second.weight.double().T + second.bias.double()


def dit_inputs(dit: DiffusionTransformer, batch: int = 2, latents: int = 10):
    g = torch.Generator().manual_seed(0)
    cfg = dit.config
    return (
        torch.randn(batch, cfg.io_channels, latents, generator=g),
        torch.randn(batch, 257, cfg.cond_token_dim, generator=g),
        torch.randn(batch, cfg.global_cond_dim, generator=g),
        torch.randn(batch, cfg.local_add_cond_dim, latents, generator=g),
    )


def traced_forward(dit: DiffusionTransformer, t: torch.Tensor, dtype: torch.dtype):
    """One forward; returns (the timestep features to_timestep_embed received, its output, the adaLN input)."""
    seen = {}
    hooks = [
        dit.to_timestep_embed.register_forward_hook(lambda m, args, out: seen.update(features=args[0], embed=out)),
        dit.transformer.global_cond_embedder.register_forward_hook(lambda m, args, out: seen.update(adaln=args[0])),
    ]
    x, cross, glob, local = dit_inputs(dit)
    try:
        with torch.no_grad():
            dit(x.to(dtype), t, cross.to(dtype), glob.to(dtype), local.to(dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return seen["features"], seen["embed"], seen["adaln"], glob


def test_dit_timestep_path_is_the_official_one() -> None:
    dit = strict_dit()
    t = torch.tensor([0.3, 0.85])
    features, embed, adaln, glob = traced_forward(dit, t, torch.float32)
    want = official_timestep_features(t, torch.float32)
    tolerance = feature_tolerance(t, torch.float32)
    assert torch.all((features.double() - want.double()).abs() <= tolerance)
    # x1000 (the DDPM convention) would give the features of t = 300 and 850: nothing like these.
    assert torch.any((official_timestep_features(1000 * t, torch.float32) - want).abs() > 100 * tolerance)
    torch.testing.assert_close(embed.double(), official_timestep_embed(dit, features), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        global_embed = dit.to_global_embed(glob)
    torch.testing.assert_close(
        adaln.double(), global_embed.double() + official_timestep_embed(dit, features), atol=1e-4, rtol=1e-4
    )
    # and t reaches the velocity: the strict DiT's output moves by O(1) between t = 0.1 and 0.9
    x, cross, glob, local = dit_inputs(dit)
    with torch.no_grad():
        early, late = (dit(x, torch.full((2,), v), cross, glob, local) for v in (0.1, 0.9))
    assert relative_l2(early, late) > 0.3


def test_dit_timestep_is_quantised_to_the_model_dtype() -> None:
    # In fp16, t = 0.3 is stored as 0.2999...; at the 10 kHz feature frequency that is several radians.
    dit = strict_dit(torch.float16)
    t = torch.tensor([0.3, 0.85])
    features, _, _, _ = traced_forward(dit, t, torch.float16)
    assert features.dtype == torch.float16
    quantised = official_timestep_features(t, torch.float16)
    tolerance = feature_tolerance(t, torch.float16)
    assert torch.all((features.double() - quantised.double()).abs() <= tolerance)
    unquantised = official_timestep_features(t.double(), torch.float64)
    assert torch.any((unquantised - quantised.double()).abs() > 10 * tolerance)


def test_samplers_give_the_dit_flow_times_in_0_1() -> None:
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return torch.zeros_like(x)

    schedule = S.build_schedule(6, 1.0, S.default_sampling_shift(), [40, 12])
    for sampler in ("pingpong", "euler"):
        seen.clear()
        S.sample(model, torch.randn(2, 4, 8), schedule, sampler=sampler, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(torch.stack(seen, dim=1), schedule[:, :-1])
    assert 0 < schedule[:, :-1].min() and schedule.max() <= 1


# ------------------------------------------------------------------------------------------------ APG


def official_apg_project(v0: torch.Tensor, v1: torch.Tensor, padding_mask: torch.Tensor | None):
    """The official ``apg_project``, item by item in float64."""
    parallel, orthogonal = torch.empty_like(v0, dtype=torch.float64), torch.empty_like(v0, dtype=torch.float64)
    for b in range(v0.shape[0]):
        a, d = v0[b].double(), v1[b].double()
        if padding_mask is None:
            unit = d / max(d.norm().item(), 1e-12)  # F.normalize
            parallel[b] = (a * unit).sum() * unit
            orthogonal[b] = a - parallel[b]
        else:
            m = padding_mask[b].double()[None]
            unit = d * m / max((d * m).norm().item(), 1e-8)
            parallel[b] = (a * m * unit).sum() * unit
            orthogonal[b] = (a - (a * unit).sum() * unit) * m  # unmasked v0, masked result
    return parallel, orthogonal


def official_guide(
    x, t, v_cond, v_uncond, cfg_scale, apg_scale, padding_mask=None, cfg_norm_threshold=0.0, scale_phi=0.0
) -> torch.Tensor:
    """The CFG block of the official ``DiffusionTransformer.forward`` (rectified flow), in float64."""
    x, sigma = x.double(), t.double()[:, None, None]
    cond_denoised = x - v_cond.double() * sigma
    diff = cond_denoised - (x - v_uncond.double() * sigma)
    if cfg_norm_threshold > 0:
        measured = diff if padding_mask is None else diff * padding_mask[:, None].double()
        diff = diff * torch.clamp(cfg_norm_threshold / measured.flatten(1).norm(dim=1), max=1)[:, None, None]
    if apg_scale == 0:
        guidance = diff
    else:
        _, orthogonal = official_apg_project(diff, cond_denoised, padding_mask)
        guidance = orthogonal if apg_scale == 1 else apg_scale * orthogonal + (1 - apg_scale) * diff
    out = (x - (cond_denoised + (cfg_scale - 1) * guidance)) / sigma
    if scale_phi:
        out = (
            scale_phi * out * (v_cond.double().std(dim=1, keepdim=True) / out.std(dim=1, keepdim=True))
            + (1 - scale_phi) * out
        )
    return out


def guidance_inputs():
    """Velocities whose guidance difference lies mostly ALONG the conditional estimate (the case APG is for):
    removing that component, as APG does, changes the result by O(1), so APG and CFG are far apart."""
    g = torch.Generator().manual_seed(3)
    batch, channels, length = 3, 8, 20
    x = torch.randn(batch, channels, length, generator=g)
    t = torch.tensor([0.9, 0.5, 0.2])
    v_cond = torch.randn(batch, channels, length, generator=g)
    cond_denoised = x - t[:, None, None] * v_cond
    uncond_denoised = 0.6 * cond_denoised + 0.2 * torch.randn(batch, channels, length, generator=g)
    v_uncond = (x - uncond_denoised) / t[:, None, None]
    padding_mask = torch.arange(length)[None] < torch.tensor([20, 14, 7])[:, None]
    return x, t, v_cond, v_uncond, padding_mask


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padding-mask"])
def test_apg_project_is_the_official_one(masked: bool) -> None:
    x, t, v_cond, v_uncond, padding_mask = guidance_inputs()
    mask = padding_mask if masked else None
    direction = x - t[:, None, None] * v_cond
    diff = direction - (x - t[:, None, None] * v_uncond)
    parallel, orthogonal = S.apg_project(diff, direction, mask)
    want_parallel, want_orthogonal = official_apg_project(diff, direction, mask)
    torch.testing.assert_close(parallel.double(), want_parallel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(orthogonal.double(), want_orthogonal, atol=1e-5, rtol=1e-5)
    assert want_parallel.norm() > 0.5 * diff.norm()  # the inputs make the projection matter
    if masked:  # the mask changes the result (a regression dropping it fails above)
        assert (official_apg_project(diff, direction, None)[1] - want_orthogonal).norm() > 0.1 * want_orthogonal.norm()


@pytest.mark.parametrize("apg_scale", [1.0, 0.5, 0.0], ids=["apg", "blend", "cfg"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padding-mask"])
@pytest.mark.parametrize(
    "extra", [{}, {"cfg_norm_threshold": 2.0}, {"scale_phi": 0.7}], ids=["plain", "norm-threshold", "rescale"]
)
def test_guide_is_the_official_cfg_block(apg_scale: float, masked: bool, extra: dict) -> None:
    x, t, v_cond, v_uncond, padding_mask = guidance_inputs()
    mask = padding_mask if masked else None
    options = S.GuidanceOptions(cfg_scale=5.0, apg_scale=apg_scale, **extra)
    got = S.guide(x, t, v_cond, v_uncond, options, mask)
    want = official_guide(x, t, v_cond, v_uncond, 5.0, apg_scale, mask, **extra)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
    # Far from every other guidance mode: an APG -> CFG (or blend) regression is an O(1) error here.
    for other in {1.0, 0.5, 0.0} - {apg_scale}:
        alternative = official_guide(x, t, v_cond, v_uncond, 5.0, other, mask, **extra)
        assert (alternative - want).norm() > 0.1 * want.norm(), other
