"""StableAudioModel.generate: bad input, guidance pass counts, seeds, batches in every mode, output policies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sa3_core.pipeline import StableAudioModel
from tests.helpers import relative_l2

SR = 44100


class CountingDiT:
    """Wraps the DiT forward to record each call's batch size (and optionally to forbid calls)."""

    def __init__(self, model: StableAudioModel, forbid: bool = False):
        self.model, self.forbid, self.batches = model, forbid, []
        self.original = model.dit.forward

    def __enter__(self) -> CountingDiT:
        def forward(x, *args, **kwargs):
            if self.forbid:
                raise AssertionError("the DiT ran although the request was invalid")
            self.batches.append(x.shape[0])
            return self.original(x, *args, **kwargs)

        self.model.dit.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        del self.model.dit.forward  # back to the class method


@pytest.fixture(scope="module")
def model(fixtures_dir: Path) -> StableAudioModel:
    return StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")


def clip(seconds: float = 2.0, channels: int = 2, sample_rate: int = SR) -> tuple[int, torch.Tensor]:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return sample_rate, 0.3 * torch.sin(2 * math.pi * 220 * t).repeat(channels, 1)


BAD_REQUESTS = {
    "region end before start": (
        dict(inpaint_audio=clip(4), inpaint_mask_start_seconds=2.0, inpaint_mask_end_seconds=1.0, duration=4.0),
        "must be after start",
    ),
    "region outside the audio": (
        dict(inpaint_audio=clip(4), inpaint_mask_start_seconds=5.0, inpaint_mask_end_seconds=6.0, duration=4.0),
        "at or after the end",
    ),
    "negative region start": (
        dict(inpaint_audio=clip(4), inpaint_mask_start_seconds=-1.0, inpaint_mask_end_seconds=1.0, duration=4.0),
        "negative",
    ),
    "start/end list lengths": (
        dict(
            inpaint_audio=clip(4), inpaint_mask_start_seconds=[0.5, 1.0], inpaint_mask_end_seconds=[1.0], duration=4.0
        ),
        "starts but",
    ),
    "zero duration": (dict(duration=0.0), "must be positive"),
    "negative duration": (dict(duration=-3.0), "must be positive"),
    "NaN duration": (dict(duration=float("nan")), "finite"),
    "duration above the maximum": (dict(duration=121.0), "maximum of 120.00 s"),
    "prompt list length": (dict(prompt=["a", "b", "c"], batch_size=2), "prompt has 3 values but batch_size is 2"),
    "negative prompt list length": (dict(negative_prompt=["a"], batch_size=2), "negative_prompt has 1 values"),
    "duration list length": (dict(duration=[1.0, 2.0], batch_size=3), "duration has 2 values"),
    "empty init audio": (dict(init_audio=(SR, torch.zeros(2, 0)), init_noise_level=0.5), "empty"),
    "NaN in init audio": (dict(init_audio=(SR, torch.full((2, 100), float("nan"))), init_noise_level=0.5), "NaN"),
    "Inf in inpaint audio": (
        dict(
            inpaint_audio=(SR, torch.full((2, 100), float("inf"))),
            inpaint_mask_start_seconds=0.5,
            inpaint_mask_end_seconds=1.0,
        ),
        "infinite",
    ),
    "init noise level above 1": (dict(init_audio=clip(), init_noise_level=1.5), "init_noise_level"),
    "init noise level negative": (dict(init_audio=clip(), init_noise_level=-0.1), "init_noise_level"),
    "init noise level zero": (dict(init_audio=clip(), init_noise_level=0.0), "init_noise_level"),
    "zero steps": (dict(steps=0), "steps must be an integer >= 1"),
    "fractional steps": (dict(steps=2.5), "steps must be an integer >= 1"),
    "zero batch": (dict(batch_size=0), "batch_size"),
    "bad seed": (dict(seed=-5), "seed"),
    "bad sample rate": (dict(init_audio=(0, torch.zeros(2, 10)), init_noise_level=0.5), "sample rate"),
    "inpaint audio without regions": (dict(inpaint_audio=clip()), "without"),
    "unknown peak policy": (dict(peak="loud"), "peak policy"),
    "non-string prompt": (dict(prompt=["ok", 3], batch_size=2), r"prompt\[1\] must be a string"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_raises_before_sampling(case: str, model: StableAudioModel) -> None:
    overrides, message = BAD_REQUESTS[case]
    kwargs = dict(prompt="piano", duration=2.0, steps=2, seed=1) | overrides
    with CountingDiT(model, forbid=True), pytest.raises(ValueError, match=message):
        model.generate(**kwargs)


def test_bad_sampler_raises_before_the_first_step(model: StableAudioModel) -> None:
    with CountingDiT(model, forbid=True), pytest.raises(ValueError, match="unknown sampler"):
        model.generate(prompt="piano", duration=1.0, steps=2, seed=1, sampler_type="heun")


@pytest.mark.parametrize("cfg_scale, batch, expected_batch", [(1.0, 1, 1), (1.0, 2, 2), (7.0, 1, 2), (3.0, 2, 4)])
def test_cfg_one_runs_one_pass_per_step_and_guidance_one_batched_pass(model, cfg_scale, batch, expected_batch) -> None:
    with CountingDiT(model) as dit:
        model.generate(
            prompt="piano",
            negative_prompt="noise",
            duration=1.0,
            steps=3,
            seed=1,
            cfg_scale=cfg_scale,
            batch_size=batch,
        )
    assert dit.batches == [expected_batch] * 3


def test_random_seed_is_reported_and_reproduces(model: StableAudioModel) -> None:
    first = model.generate(prompt="piano", duration=1.0, steps=2, seed=-1, return_latents=True)
    seed = model.last_seed
    assert isinstance(seed, int) and seed >= 0
    again = model.generate(prompt="piano", duration=1.0, steps=2, seed=seed, return_latents=True)
    assert torch.equal(first, again)
    other = model.generate(prompt="piano", duration=1.0, steps=2, seed=seed + 1, return_latents=True)
    assert not torch.equal(first, other)


def test_generation_leaves_the_global_rng_alone(model: StableAudioModel) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.generate(prompt="piano", duration=1.0, steps=2, seed=5, return_latents=True)
    assert torch.equal(torch.rand(3), expected)


def test_batch_inpainting_with_per_item_prompts_and_durations(model: StableAudioModel) -> None:
    """The official code crashes on inpainting with batch > 1; each item here gets its own length."""
    items = model.generate(
        prompt=["piano", "drums"],
        negative_prompt=["noise", "loud"],
        duration=[3.0, 2.0],
        batch_size=2,
        steps=2,
        seed=3,
        cfg_scale=2.0,
        inpaint_audio=clip(3),
        inpaint_mask_start_seconds=[0.5],
        inpaint_mask_end_seconds=[1.0],
    )
    assert [tuple(i.shape) for i in items] == [(2, 3 * SR), (2, 2 * SR)]
    assert all(torch.isfinite(i).all() for i in items)


def test_batch_items_match_single_generation_of_the_same_window(model: StableAudioModel) -> None:
    """Items of a batch only differ by their noise: item 0 equals a batch-1 run when the window is the same."""
    batch = model.generate(prompt=["piano", "drums"], duration=2.0, batch_size=2, steps=2, seed=3, return_latents=True)
    assert batch.shape[0] == 2 and not torch.equal(batch[0], batch[1])


def test_continuation_keeps_the_source_audio(model: StableAudioModel) -> None:
    """Regenerating 2..4 s of a 4 s window keeps the first 2 s of the source in the DiT input."""
    window = model.plan_window([4.0])
    source = model.encode_audio(clip(2.0), window)
    local = model.inpaint_condition(window, source, regions=[(2.0, 4.0)])
    keep = local[:, 0]
    kept_latents = int(keep[0].sum())
    assert kept_latents == math.ceil(2.0 * SR / 4096)  # latents whose first sample lies before 2 s
    assert torch.equal(local[:, 1:, :kept_latents], source[..., :kept_latents])
    assert torch.count_nonzero(local[:, 1:, kept_latents:]) == 0
    audio = model.generate(
        prompt="house",
        duration=4.0,
        steps=2,
        seed=4,
        inpaint_audio=clip(2.0),
        inpaint_mask_start_seconds=2.0,
        inpaint_mask_end_seconds=4.0,
    )
    assert audio.shape == (1, 2, 4 * SR)


def test_prebuilt_mask_equals_regions(model: StableAudioModel) -> None:
    kwargs = dict(prompt="drums", duration=3.0, steps=2, seed=9, inpaint_audio=clip(3), return_latents=True)
    by_regions = model.generate(**kwargs, inpaint_mask_start_seconds=[0.5, 2.0], inpaint_mask_end_seconds=[1.0, 2.5])
    mask = torch.ones(1, 3 * SR)
    mask[:, int(0.5 * SR) : int(1.0 * SR)] = 0
    mask[:, int(2.0 * SR) : int(2.5 * SR)] = 0
    assert torch.equal(model.generate(**kwargs, inpaint_mask=mask), by_regions)


@pytest.mark.parametrize("sample_rate, channels", [(22050, 1), (48000, 2), (16000, 4)])
def test_init_audio_of_any_rate_and_channel_count(model: StableAudioModel, sample_rate: int, channels: int) -> None:
    prepared = model.prepare_audio(clip(1.0, channels, sample_rate), model.plan_window([2.0]))
    assert prepared.shape == (1, 2, model.plan_window([2.0]).audio_samples)
    # one second of audio, resampled to 44.1 kHz, then zeros
    assert prepared[..., : SR - 50].abs().amax() > 0.1
    assert torch.count_nonzero(prepared[..., SR + 50 :]) == 0
    audio = model.generate(
        prompt="guitar",
        duration=2.0,
        steps=2,
        seed=3,
        init_noise_level=0.7,
        init_audio=clip(1.0, channels, sample_rate),
    )
    assert audio.shape == (1, 2, 2 * SR)


def test_init_noise_level_one_is_text_to_audio_from_the_same_noise(model: StableAudioModel) -> None:
    """At init_noise_level 1 the init audio is fully replaced by noise (official semantics)."""
    kwargs = dict(prompt="guitar", duration=2.0, steps=3, seed=3, return_latents=True)
    plain = model.generate(**kwargs)
    with_init = model.generate(**kwargs, init_audio=clip(2.0), init_noise_level=1.0)
    assert torch.allclose(plain, with_init, atol=1e-5)


def test_peak_policies(model: StableAudioModel) -> None:
    window = model.plan_window([1.0])
    latents = torch.randn(1, 256, window.latents) * 50  # decodes far past full scale
    clamped = model.decode_latents(latents, window, peak="clamp")
    limited = model.decode_latents(latents, window, peak="limit")
    raw = model.decode_latents(latents, window, peak="none")
    assert raw.abs().max() > 1
    assert clamped.abs().max() <= 1 and torch.equal(clamped, raw.clamp(-1, 1))
    assert limited.abs().max() <= 1 + 1e-6
    assert torch.allclose(limited * raw.abs().max(), raw, atol=1e-5)  # scaled, never clipped


def test_chunked_and_unchunked_decode_agree(model: StableAudioModel) -> None:
    window = model.plan_window([30.0])
    latents = torch.randn(1, 256, window.latents)
    chunked = model.decode_latents(latents, window, chunked=True, peak="none")
    whole = model.decode_latents(latents, window, chunked=False, peak="none")
    assert chunked.shape == whole.shape
    assert relative_l2(chunked, whole) < 1e-4


def test_official_low_level_conditioning_paths(model: StableAudioModel) -> None:
    kwargs = dict(steps=2, seed=5, cfg_scale=3.0, return_latents=True)
    simple = model.generate(
        prompt=["piano", "drums"], negative_prompt=["noise", "loud"], duration=[2.0, 1.5], batch_size=2, **kwargs
    )
    dicts = model.generate(
        conditioning=[{"prompt": "piano", "seconds_total": 2.0}, {"prompt": "drums", "seconds_total": 1.5}],
        negative_conditioning=[{"prompt": "noise", "seconds_total": 2.0}, {"prompt": "loud", "seconds_total": 1.5}],
        **kwargs,
    )
    assert torch.equal(simple, dicts)
    encoded = model.encode_prompts(["piano", "drums"], [2.0, 1.5], ["noise", "loud"])

    def official(c):  # the dict the official model.conditioner(...) returns
        prompt, seconds = c.cross_attn_cond[:, :256], c.cross_attn_cond[:, 256:]
        return {"prompt": (prompt, c.prompt_mask), "seconds_total": (seconds, torch.ones(2, 1))}

    tensors = model.generate(
        conditioning_tensors=official(encoded.positive),
        negative_conditioning_tensors=official(encoded.negative),
        duration=[2.0, 1.5],
        batch_size=2,
        **kwargs,
    )
    assert torch.equal(simple, tensors)
    with pytest.raises(ValueError, match="sigma_max"):
        model.generate(prompt="x", duration=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="expected keys"):
        model.generate(conditioning=[{"text": "x"}], duration=1.0)


def test_negative_prompt_is_not_encoded_without_guidance(model: StableAudioModel) -> None:
    seen: list[list[str]] = []
    original = model.text_encoder.encode
    model.text_encoder.clear_cache()
    model.text_encoder.encode = lambda prompts: seen.append(list(prompts)) or original(prompts)
    try:
        model.generate(prompt="piano", negative_prompt="noise", duration=1.0, steps=1, seed=1, cfg_scale=1.0)
        assert seen == [["piano"]]
        model.generate(prompt="piano", negative_prompt="noise", duration=1.0, steps=1, seed=1, cfg_scale=2.0)
        assert seen[1:] == [["piano"], ["noise"]]
    finally:
        del model.text_encoder.encode


def test_models_loaded_under_inference_mode_generate(fixtures_dir: Path) -> None:
    """ComfyUI runs nodes under torch.inference_mode: weights made there are inference tensors."""
    with torch.inference_mode():
        loaded = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
        latents = loaded.generate(prompt="piano", duration=1.0, steps=2, seed=3, return_latents=True)
    reference = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
    assert torch.equal(latents, reference.generate(prompt="piano", duration=1.0, steps=2, seed=3, return_latents=True))
