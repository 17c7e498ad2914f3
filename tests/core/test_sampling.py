"""Schedules, samplers and guidance (sa3_core.sampling) against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from sa3_core import sampling as S

# The official build_schedule (stable_audio_3/inference/sampling.py at 636f906) for sigma_max = 1 unless
# noted, 6 decimals.
TABLE_8 = [1.000000, 0.994376, 0.984480, 0.957912, 0.890903, 0.745547, 0.512497, 0.273885, 0.0]
TABLE_4 = [1.0, 0.984480, 0.890903, 0.512497, 0.0]
TABLE_8_INIT_09 = [0.9, 0.988541, 0.971667, 0.931662, 0.844224, 0.682980, 0.461327, 0.253979, 0.0]


def _close6(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1.5e-6, rtol=0)


# ------------------------------------------------------------------------------------------ schedules


def test_default_schedule_matches_table_8_and_4_steps():
    shift = S.default_sampling_shift()
    lengths = torch.tensor([11, 54, 1292])  # rate 0: the length does not matter
    sched8 = S.build_schedule(8, 1.0, shift, lengths)
    assert sched8.shape == (3, 9) and sched8.dtype == torch.float32
    for row in sched8:
        _close6(row, TABLE_8)
    _close6(S.build_schedule(4, 1.0, shift, lengths)[1], TABLE_4)
    _close6(S.build_schedule(1, 1.0, shift, 5)[0], [1.0, 0.0])


def test_default_schedule_50_steps_ends():
    sched = S.build_schedule(50, 1.0, S.default_sampling_shift(), 100)[0]
    _close6(sched[:3], [1.0, 0.997615, 0.997191])
    _close6(sched[-2:], [0.137525, 0.0])


def test_init_noise_level_quirk_only_first_point_repinned():
    sched = S.build_schedule(8, 0.9, S.default_sampling_shift(), torch.tensor([54, 54]))
    _close6(sched[0], TABLE_8_INIT_09)
    assert sched[0, 1] > sched[0, 0]  # the quirk: the first re-noise goes above sigma_max
    # "strength" formula from the spec: sigmoid(8.2 * sigma_max * (1 - 1/steps) - 2)
    expected = 1 / (1 + math.exp(-(8.2 * 0.5 * (1 - 1 / 8) - 2)))
    assert S.build_schedule(8, 0.5, S.default_sampling_shift(), 54)[0, 1].item() == pytest.approx(expected, abs=1e-6)


def test_logsnr_rate_makes_rows_per_item():
    shift = S.LogSNRShift(rate=1.0)
    lengths = torch.tensor([250, 2000, 4000])
    sched = S.build_schedule(6, 1.0, shift, lengths)
    assert sched.shape == (3, 7)
    assert torch.all(sched[:, 0] == 1) and torch.all(sched[:, -1] == 0)
    assert torch.all(sched[:, 1:] < sched[:, :-1])  # strictly decreasing
    # hand formula: start = -6.2 - log2(n / 2000); t' = sigmoid(-(2 - t (2 - start)))
    t = torch.linspace(1, 0, 7)
    for row, n in zip(sched, lengths.tolist()):
        start = -6.2 - math.log2(n / 2000)
        ref = [1 / (1 + math.exp(2 - v * (2 - start))) for v in t.tolist()]
        ref[0], ref[-1] = 1.0, 0.0
        torch.testing.assert_close(row, torch.tensor(ref), atol=2e-6, rtol=0)
    # longer items are noisier at the same step
    assert sched[2, 3] > sched[1, 3] > sched[0, 3]


def test_shift_from_options_types_and_errors():
    assert S.shift_from_options(None) == S.LogSNRShift(rate=0.0, anchor_logsnr=-6.2, logsnr_end=2.0)
    assert S.shift_from_options({"type": "logsnr"}) == S.LogSNRShift()  # official class default rate 1.0
    assert isinstance(S.shift_from_options({"base_shift": 0.4}), S.FullShift)  # official default type "full"
    assert S.shift_from_options({"type": "flux", "alpha_min": 2.0}) == S.FluxShift(alpha_min=2.0)
    assert S.shift_from_options({"type": "none"}) == S.NoShift()
    with pytest.raises(ValueError, match="unknown distribution shift type"):
        S.shift_from_options({"type": "cosine"})
    with pytest.raises(ValueError, match="unknown option"):
        S.shift_from_options({"type": "flux", "alpha": 3.0})


def test_flux_shift_formula():
    shift = S.FluxShift(min_length=256, max_length=4096, alpha_min=1.0, alpha_max=4.0)
    t = torch.linspace(1, 0, 5)
    lengths = torch.tensor([100, 1024, 9000])  # clamped to [256, 4096]
    out = shift(t, lengths)
    for row, n in zip(out, [256, 1024, 4096]):
        frac = (math.log(n) - math.log(256)) / (math.log(4096) - math.log(256))
        a = math.exp(frac * math.log(4.0))
        ref = [a * v / (1 + (a - 1) * v) for v in t.tolist()]
        torch.testing.assert_close(row, torch.tensor(ref), atol=1e-6, rtol=0)


@pytest.mark.parametrize("use_sine", [False, True])
def test_full_shift_formula(use_sine):
    shift = S.FullShift(use_sine=use_sine)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    out = shift(t, torch.tensor([256, 2176, 4096]))
    for row, n in zip(out, [256, 2176, 4096]):
        mu = -(0.5 + 0.65 * (n - 256) / 3840)
        ref = []
        for v in t.tolist():
            r = 1.0 if v == 1 else 1 - math.exp(mu) / (math.exp(mu) + v / (1 - v))
            ref.append(math.sin(r * math.pi / 2) if use_sine else r)
        torch.testing.assert_close(row, torch.tensor(ref), atol=1e-6, rtol=0)


def test_no_shift_is_linear_and_build_schedule_validates_steps():
    sched = S.build_schedule(4, 0.8, S.NoShift(), torch.tensor([3, 7]))
    torch.testing.assert_close(sched, torch.linspace(0.8, 0, 5).expand(2, -1))
    torch.testing.assert_close(S.build_schedule(4, 0.8, None, 3), torch.linspace(0.8, 0, 5)[None])
    with pytest.raises(ValueError, match="steps"):
        S.build_schedule(0, 1.0, S.default_sampling_shift(), 10)


def test_mix_init():
    init, noise = torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), -1.0)
    torch.testing.assert_close(S.mix_init(init, noise, 0.25), torch.full((1, 2, 3), 2 * 0.75 - 0.25))


# ------------------------------------------------------------------------------------------ samplers


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An analytic velocity field that depends on x and on each item's own t."""
    tt = t.float().view(-1, 1, 1)
    return torch.tanh(x) * (0.5 + tt) + 0.3 * torch.sin(3 * tt)


def _schedule() -> torch.Tensor:
    # different rows per item, so per-item indexing mistakes show
    return S.build_schedule(5, 1.0, S.LogSNRShift(rate=1.0), torch.tensor([200, 2000, 5000]))


def _x() -> torch.Tensor:
    return torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0))


def test_pingpong_matches_reference_loop():
    x, sched = _x(), _schedule()
    steps = sched.shape[1] - 1
    gen = torch.Generator().manual_seed(3)
    noises = [torch.randn(x.shape, generator=gen) for _ in range(steps)]
    out = S.sample(toy_model, x, sched, sampler="pingpong", generator=torch.Generator().manual_seed(3))
    for b in range(3):  # reference: one item at a time, scalar times
        xb = x[b : b + 1]
        for i in range(steps):
            tc, tn = sched[b, i].item(), sched[b, i + 1].item()
            d = xb - tc * toy_model(xb, torch.tensor([tc]))
            xb = (1 - tn) * d + tn * noises[i][b : b + 1]
        torch.testing.assert_close(out[b : b + 1], xb, atol=1e-6, rtol=1e-6)


def test_pingpong_draws_one_noise_per_step_from_the_global_generator():
    x, sched = _x(), _schedule()
    steps = sched.shape[1] - 1
    torch.manual_seed(7)
    out = S.sample(toy_model, x, sched)  # pingpong is the default
    after = torch.randn(5)
    torch.manual_seed(7)
    noises = [torch.randn_like(x) for _ in range(steps)]  # steps draws, the last one included
    expected_after = torch.randn(5)
    assert torch.equal(after, expected_after)
    # and they were used in that order: re-run with an explicit generator holding the same stream
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(S.sample(toy_model, x, sched, generator=gen), out)
    assert torch.equal(torch.randn(x.shape, generator=torch.Generator().manual_seed(7)), noises[0])


def test_explicit_generator_leaves_global_rng_alone():
    torch.manual_seed(11)
    S.sample(toy_model, _x(), _schedule(), generator=torch.Generator().manual_seed(1))
    after = torch.randn(4)
    torch.manual_seed(11)
    assert torch.equal(after, torch.randn(4))


@pytest.mark.parametrize("sampler", ["euler", "rk4", "dpmpp"])
def test_deterministic_samplers_draw_no_noise(sampler):
    torch.manual_seed(5)
    S.sample(toy_model, _x(), _schedule(), sampler=sampler)
    after = torch.randn(4)
    torch.manual_seed(5)
    assert torch.equal(after, torch.randn(4))


def test_euler_matches_reference_loop():
    x, sched = _x(), _schedule()
    out = S.sample(toy_model, x, sched, sampler="euler")
    for b in range(3):
        xb = x[b : b + 1]
        for i in range(sched.shape[1] - 1):
            tc, tn = sched[b, i].item(), sched[b, i + 1].item()
            xb = xb + (tn - tc) * toy_model(xb, torch.tensor([tc]))
        torch.testing.assert_close(out[b : b + 1], xb, atol=1e-6, rtol=1e-6)


def test_rk4_matches_reference_loop_per_item():
    x, sched = _x(), _schedule()
    out = S.sample(toy_model, x, sched, sampler="rk4")
    for b in range(3):
        xb = x[b : b + 1]
        for i in range(sched.shape[1] - 1):
            tc, tn = sched[b, i].item(), sched[b, i + 1].item()
            h = tn - tc
            k1 = toy_model(xb, torch.tensor([tc]))
            k2 = toy_model(xb + h / 2 * k1, torch.tensor([tc + h / 2]))
            k3 = toy_model(xb + h / 2 * k2, torch.tensor([tc + h / 2]))
            k4 = toy_model(xb + h * k3, torch.tensor([max(tn, 1e-5)]))
            xb = xb + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        torch.testing.assert_close(out[b : b + 1], xb, atol=1e-5, rtol=1e-5)


def test_rk4_never_evaluates_at_t_zero():
    seen: list[float] = []

    def spy(x, t):
        seen.extend(t.tolist())
        return toy_model(x, t)

    S.sample(spy, _x(), _schedule(), sampler="rk4")
    assert min(seen) == pytest.approx(1e-5)
    assert len(seen) == 4 * 5 * 3


def test_dpmpp_matches_reference_loop():
    x, sched = _x(), _schedule()
    out = S.sample(toy_model, x, sched, sampler="dpmpp")

    def lam(t: float) -> float:
        return math.log(max(1 - t, 1e-10) / max(t, 1e-10))

    steps = sched.shape[1] - 1
    for b in range(3):
        xb, prev = x[b : b + 1], None
        for i in range(steps):
            tc, tn = sched[b, i].item(), sched[b, i + 1].item()
            d = xb - tc * toy_model(xb, torch.tensor([tc]))
            c = (tn - tc) / ((1 - tn) * tc)
            if prev is None or tn == 0:
                target = d
            else:
                r = (lam(tc) - lam(sched[b, i - 1].item())) / (lam(tn) - lam(tc))
                target = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * prev
            xb = (tn / tc) * xb - (1 - tn) * c * target
            prev = d
        torch.testing.assert_close(out[b : b + 1], xb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler", S.SAMPLERS)
def test_shared_1d_schedule_equals_expanded(sampler):
    x = _x()
    sched = S.build_schedule(4, 1.0, S.default_sampling_shift(), 10)[0]
    a = S.sample(toy_model, x, sched, sampler=sampler, generator=torch.Generator().manual_seed(0))
    b = S.sample(toy_model, x, sched.expand(3, -1), sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_callback_arguments():
    x, sched = _x(), _schedule()
    calls = []
    S.sample(
        toy_model, x, sched, sampler="euler", callback=lambda i, n, xi, d: calls.append((i, n, xi.clone(), d.clone()))
    )
    assert [(i, n) for i, n, _, _ in calls] == [(i, 5) for i in range(5)]
    _, _, x0, d0 = calls[0]
    assert torch.equal(x0, x)
    torch.testing.assert_close(d0, x - sched[:, 0].view(-1, 1, 1) * toy_model(x, sched[:, 0]))


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("sampler", S.SAMPLERS)
def test_exception_from_callback_aborts_sampling(sampler):
    calls = {"model": 0}

    def counting(x, t):
        calls["model"] += 1
        return toy_model(x, t)

    def stop_at_2(i, n, x, d):
        if i == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        S.sample(counting, _x(), _schedule(), sampler=sampler, callback=stop_at_2)
    per_step = 4 if sampler == "rk4" else 1
    assert calls["model"] == 2 * per_step + 1  # steps 0, 1 complete, step 2's first evaluation, then abort


def test_sampler_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        S.sample(toy_model, _x(), _schedule(), sampler="heun")
    with pytest.raises(ValueError, match="does not fit"):
        S.sample(toy_model, _x(), torch.ones(2, 5))


# ------------------------------------------------------------------------------------------ guidance


class MockDiT:
    """Deterministic per-item stand-in for the DiT that records every call; its "step constants" are the
    conditioning they were made from, so a forward can check it got the ones of its own conditioning."""

    def __init__(self):
        self.calls: list[dict] = []
        self.constants_made = 0

    def step_constants(self, cross, glob, local, latents):
        self.constants_made += 1
        return (cross, glob, local, latents)

    def __call__(self, x, t, cross, glob, local, padding_mask=None, constants=None):
        if constants is not None:
            assert constants[0] is cross and constants[1] is glob and constants[2] is local
            assert constants[3] == x.shape[-1]
        self.calls.append(dict(x=x, t=t, cross=cross, glob=glob, local=local, padding_mask=padding_mask))
        tt = t.float().view(-1, 1, 1)
        c = cross.mean(dim=(1, 2)).view(-1, 1, 1) + cross[:, -1, :2].sum(-1).view(-1, 1, 1)
        v = torch.tanh(x * (1 + c)) + 0.2 * tt + glob.mean(-1).view(-1, 1, 1) + 0.1 * local[:, 1:] + 0.05 * local[:, :1]
        if padding_mask is not None:
            v = v * (0.5 + padding_mask[:, None].float())
        return v


B, C, L, N, D = 3, 5, 12, 7, 6


def _cond(negative: bool = True, padded: bool = True) -> S.DiTConditioning:
    g = torch.Generator().manual_seed(1)
    neg_mask = torch.rand(B, N, generator=g) > 0.4
    neg_mask[:, -1] = True
    return S.DiTConditioning(
        cross_attn_cond=torch.randn(B, N, D, generator=g),
        global_cond=torch.randn(B, D, generator=g),
        local_add_cond=torch.randn(B, C + 1, L, generator=g),
        padding_mask=(torch.arange(L)[None] < torch.tensor([12, 9, 5])[:, None]) if padded else None,
        negative_cross_attn_cond=torch.randn(B, N, D, generator=g) if negative else None,
        negative_cross_attn_mask=neg_mask if negative else None,
    )


def _xt() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, C, L, generator=torch.Generator().manual_seed(2)), torch.tensor([0.7, 0.6, 0.5])


def _item(cond: S.DiTConditioning, b: int) -> S.DiTConditioning:
    def pick(v):
        return None if v is None else v[b : b + 1]

    return S.DiTConditioning(*(pick(getattr(cond, f)) for f in cond.__dataclass_fields__))


def test_cfg_1_is_one_plain_forward_per_step():
    dit = MockDiT()
    cond = _cond()
    S.sample(S.GuidedModel(dit, cond, S.GuidanceOptions(cfg_scale=1.0)), _xt()[0], S.build_schedule(4, 1.0, None, 5))
    assert [c["x"].shape[0] for c in dit.calls] == [B] * 4
    assert all(c["cross"] is cond.cross_attn_cond and c["padding_mask"] is cond.padding_mask for c in dit.calls)
    x, t = _xt()
    dit.calls.clear()
    assert torch.equal(
        S.GuidedModel(dit, cond)(x, t),
        MockDiT()(x, t, cond.cross_attn_cond, cond.global_cond, cond.local_add_cond, cond.padding_mask),
    )


def test_cfg_is_one_batched_forward_per_step():
    dit = MockDiT()
    cond = _cond()
    S.sample(S.GuidedModel(dit, cond, S.GuidanceOptions(cfg_scale=7.0)), _xt()[0], S.build_schedule(4, 1.0, None, 5))
    assert [c["x"].shape[0] for c in dit.calls] == [2 * B] * 4
    call = dit.calls[0]
    assert torch.equal(call["x"][:B], call["x"][B:]) and torch.equal(call["t"][:B], call["t"][B:])
    assert torch.equal(call["cross"][:B], cond.cross_attn_cond)
    assert torch.equal(
        call["cross"][B:],
        S.unconditional_context(cond.cross_attn_cond, cond.negative_cross_attn_cond, cond.negative_cross_attn_mask),
    )
    assert torch.equal(call["glob"], torch.cat([cond.global_cond] * 2))  # negative global cond unused
    assert torch.equal(call["local"], torch.cat([cond.local_add_cond] * 2))
    assert torch.equal(call["padding_mask"], torch.cat([cond.padding_mask] * 2))


def test_cfg_interval_is_checked_on_item_0():
    dit = MockDiT()
    model = S.GuidedModel(dit, _cond(), S.GuidanceOptions(cfg_scale=3.0, cfg_interval=(0.0, 0.65)))
    x, _ = _xt()
    model(x, torch.tensor([0.7, 0.6, 0.5]))  # item 0 outside
    model(x, torch.tensor([0.6, 0.9, 0.9]))  # item 0 inside
    model(x, torch.tensor([0.3, 0.9, 0.9]))
    model(x, torch.tensor([0.8, 0.9, 0.9]))
    assert [c["x"].shape[0] for c in dit.calls] == [B, 2 * B, 2 * B, B]
    assert dit.constants_made == 2  # once per conditioning variant (plain, doubled)
    model.forget_constants()
    model(x, torch.tensor([0.8, 0.9, 0.9]))
    assert dit.constants_made == 3


def test_unconditional_context():
    cond = _cond()
    assert torch.equal(S.unconditional_context(cond.cross_attn_cond), torch.zeros(B, N, D))
    uncond = S.unconditional_context(cond.cross_attn_cond, cond.negative_cross_attn_cond, cond.negative_cross_attn_mask)
    keep = cond.negative_cross_attn_mask
    assert torch.equal(uncond[keep], cond.negative_cross_attn_cond[keep])
    assert torch.all(uncond[~keep] == 0)
    assert torch.equal(uncond[:, -1], cond.negative_cross_attn_cond[:, -1])  # seconds token kept
    prompt_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert S.negative_token_mask(prompt_mask).tolist() == [[True, True, False, True], [True, False, False, True]]


def _guided_parts(cfg: float, apg: float, padded: bool, **kw):
    cond = _cond(padded=padded)
    x, t = _xt()
    v = S.GuidedModel(MockDiT(), cond, S.GuidanceOptions(cfg_scale=cfg, apg_scale=apg, **kw))(x, t)
    uncond = S.unconditional_context(cond.cross_attn_cond, cond.negative_cross_attn_cond, cond.negative_cross_attn_mask)
    pm = cond.padding_mask
    v_c = MockDiT()(x, t, cond.cross_attn_cond, cond.global_cond, cond.local_add_cond, pm)
    v_u = MockDiT()(x, t, uncond, cond.global_cond, cond.local_add_cond, pm)
    return x, t.view(-1, 1, 1), v, v_c, v_u, pm


def test_apg_0_is_vanilla_cfg():
    x, t, v, v_c, v_u, _ = _guided_parts(4.0, 0.0, padded=True)
    torch.testing.assert_close(v, v_u + 4.0 * (v_c - v_u), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_apg_1_guidance_is_orthogonal_to_the_conditional_estimate(padded):
    cfg = 5.0
    x, t, v, v_c, v_u, pm = _guided_parts(cfg, 1.0, padded=padded)
    d_c = x - t * v_c
    guidance = ((x - t * v) - d_c) / (cfg - 1)
    m = torch.ones(B, 1, L) if pm is None else pm[:, None].float()
    dots = (guidance * d_c * m).sum(dim=(1, 2)) / ((guidance * m).norm(dim=(1, 2)) * (d_c * m).norm(dim=(1, 2)))
    assert dots.abs().max() < 1e-5
    assert guidance.abs().sum() > 0
    if pm is not None:
        assert torch.all(guidance[~pm[:, None].expand_as(guidance)].abs() < 1e-5)  # no guidance on padding


@pytest.mark.parametrize("apg", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("extra", [{}, {"cfg_norm_threshold": 1.5}, {"scale_phi": 0.7}])
def test_guidance_is_per_sample(apg, extra):
    cond = _cond()
    x, t = _xt()
    options = S.GuidanceOptions(cfg_scale=6.0, apg_scale=apg, **extra)
    batched = S.GuidedModel(MockDiT(), cond, options)(x, t)
    for b in range(B):
        single = S.GuidedModel(MockDiT(), _item(cond, b), options)(x[b : b + 1], t[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], single, atol=1e-6, rtol=1e-6)


def test_apg_project_blend_and_parts():
    g = torch.Generator().manual_seed(4)
    diff, direction = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    par, orth = S.apg_project(diff, direction)
    torch.testing.assert_close(par + orth, diff)
    assert (orth * direction).sum(dim=(1, 2)).abs().max() < 1e-5
    # parallel part is a per-item multiple of direction
    ratio = par / direction
    torch.testing.assert_close(ratio, ratio[:, :1, :1].expand_as(ratio))


def test_norm_threshold_caps_guidance_difference():
    thr, cfg = 0.5, 3.0
    x, t, v, v_c, v_u, pm = _guided_parts(cfg, 0.0, padded=False, cfg_norm_threshold=thr)
    diff = (x - t * v_c) - (x - t * v_u)
    capped = ((x - t * v) - (x - t * v_c)) / (cfg - 1)
    expected = torch.minimum(diff.norm(dim=(1, 2)), torch.tensor(thr))
    torch.testing.assert_close(capped.norm(dim=(1, 2)), expected, atol=1e-5, rtol=1e-5)


def test_rescale_phi_1_matches_conditional_channel_std():
    x, t, v, v_c, v_u, _ = _guided_parts(6.0, 0.0, padded=False, scale_phi=1.0)
    torch.testing.assert_close(v.std(dim=1), v_c.std(dim=1), atol=1e-5, rtol=1e-4)


def test_guide_keeps_low_precision_dtype():
    x, t = _xt()
    out = S.guide(
        x.bfloat16(),
        t.bfloat16(),
        torch.randn(B, C, L).bfloat16(),
        torch.randn(B, C, L).bfloat16(),
        S.GuidanceOptions(cfg_scale=3.0),
    )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


class _RejectFloat64(TorchFunctionMode):
    """Fails on any torch call that produces a float64 tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor) and leaf.dtype == torch.float64:
                raise AssertionError(f"{func} produced float64")
        return out


def test_no_float64_anywhere():
    # MPS has no float64: schedules, samplers and guidance must never create it.
    with _RejectFloat64():
        for options in [None, {"type": "flux", "alpha_max": 3.0}, {"type": "full", "use_sine": True}, {"type": "none"}]:
            S.build_schedule(4, 0.9, S.shift_from_options(options), torch.tensor([10, 3000]))
        sched = S.build_schedule(3, 1.0, S.LogSNRShift(rate=1.0), torch.tensor([100, 200, 300]))
        options = S.GuidanceOptions(cfg_scale=4.0, apg_scale=0.5, cfg_norm_threshold=1.0, scale_phi=0.5)
        for sampler in S.SAMPLERS:
            S.sample(S.GuidedModel(MockDiT(), _cond(), options), _xt()[0], sched, sampler=sampler)
