"""Lengths and the padding mask (sa3_core.window), inpaint masks (sa3_core.inpaint), request checks
(sa3_core.validation) and output helpers (sa3_core.output)."""

from __future__ import annotations

import math

import pytest
import torch

from sa3_core import inpaint as I
from sa3_core import output as O
from sa3_core import validation as V
from sa3_core import window as W
from sa3_core.config import ModelConfig

SR, DS = 44100, 4096


@pytest.fixture(scope="module")
def real_configs(fixtures_dir):
    folder = fixtures_dir / "real_shapes"
    return {
        "small": ModelConfig.from_json(folder / "small-music_model_config.reconstructed.json"),
        "medium": ModelConfig.from_json(folder / "medium_model_config.reconstructed.json"),
    }


# The official _adapt_sample_size (stable_audio_3/data/utils.py at 636f906) worked through by hand:
# request, model, cap -> audio_samples, L, eff, valid, padded tokens
WORKED_EXAMPLES = [
    (1.0, "small", None, 311296, 76, 11, 75, 1),
    (5.0, "small", None, 491520, 120, 54, 118, 2),
    (10.0, "small", None, 712704, 174, 108, 172, 2),
    (30.0, "small", None, 1589248, 388, 323, 387, 1),
    (120.0, "small", None, 5292032, 1292, 1292, 1292, 0),
    (250.0, "medium", None, 11296768, 2758, 2692, 2756, 2),
    (250.0, "medium", 5292032, 5292032, 1292, 2692, 1292, 0),  # the HEAD generate() default cap
    (380.0, "medium", None, 16777216, 4096, 4092, 4096, 0),
]


@pytest.mark.parametrize("seconds,variant,cap,samples,L,eff,valid,padded", WORKED_EXAMPLES)
def test_worked_examples(real_configs, seconds, variant, cap, samples, L, eff, valid, padded):
    cfg = real_configs[variant]
    ae = cfg.autoencoder
    size = W.adapt_sample_size(
        seconds, 6.0, cfg.sample_rate, ae.downsampling_ratio, ae.latent_align, cap or cfg.sample_size
    )
    assert size == samples
    assert W.latent_length(size, ae.downsampling_ratio) == L
    assert W.effective_length(seconds, cfg.sample_rate, ae.downsampling_ratio) == eff
    mask = W.padding_mask([seconds], L, 6.0, cfg.sample_rate, ae.downsampling_ratio)
    assert mask.shape == (1, L) and mask.dtype == torch.bool
    assert int(mask.sum()) == valid and L - valid == padded
    assert mask[0, :valid].all()  # valid positions are a prefix


def test_adapt_sample_size_rounding_and_no_duration():
    # 0.2 s + 0 padding = 8820 samples -> 3 latents -> aligned to 4 latents
    assert W.adapt_sample_size(0.2, 0.0, SR, DS, 2, 10**9) == 4 * DS
    assert W.adapt_sample_size(0.2, 0.0, SR, DS, 1, 10**9) == 3 * DS
    assert W.adapt_sample_size(0.0, 6.0, SR, DS, 2, 12345 * DS) == 12345 * DS  # official: no duration -> the cap


def test_headroom_and_per_item_valid_lengths():
    assert W.headroom_latents(6.0, SR, DS) == 64
    assert W.headroom_latents(0.0, SR, DS) == 0
    secs = [3.0, 2.0, 1.5]
    eff = W.effective_lengths(secs, SR, DS)
    assert eff.tolist() == [math.ceil(int(s * SR) / DS) for s in secs] == [33, 22, 17]
    assert W.valid_lengths(secs, 90, 6.0, SR, DS).tolist() == [90, 86, 81]
    mask = W.padding_mask(secs, 90, 6.0, SR, DS)
    assert mask.sum(dim=1).tolist() == [90, 86, 81]


# ------------------------------------------------------------------------------------------ inpainting


def test_regions_to_sample_mask_slices_and_clips():
    mask = I.regions_to_sample_mask([(0.5, 1.0), (2.5, 99.0)], 3 * SR, SR)
    zeros = torch.nonzero(mask == 0).flatten()
    expected = list(range(int(0.5 * SR), int(1.0 * SR))) + list(range(int(2.5 * SR), 3 * SR))
    assert zeros.tolist() == expected
    assert mask.dtype == torch.float32 and mask.sum() == 3 * SR - len(expected)


def _expected_latent_mask(regions, seconds, L):
    """Latent i is kept (1) iff its first sample i * 4096 is outside every region and before the duration."""
    out = []
    for i in range(L):
        s = i * DS
        in_region = any(int(a * SR) <= s < int(b * SR) for a, b in regions)
        out.append(0.0 if in_region or s >= int(seconds * SR) else 1.0)
    return out


def test_inpaint_two_regions_to_latents():
    regions, seconds = [(0.5, 1.0), (2.5, 3.5)], 4.0
    size = W.adapt_sample_size(seconds, 6.0, SR, DS, 2, 5292032)
    L = W.latent_length(size, DS)
    mask = I.inpaint_mask(1, size, L, SR, [seconds], regions=regions)
    assert mask.shape == (1, 1, L) and mask.dtype == torch.float32
    assert mask[0, 0].tolist() == _expected_latent_mask(regions, seconds, L)


def test_inpaint_mask_batch_shared_and_per_item():
    size, L = 40 * DS, 40
    shared = I.inpaint_mask(3, size, L, SR, [2.0] * 3, regions=[(0.5, 1.0)])
    assert shared.shape == (3, 1, L)
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[1], shared[2])

    per_item = [[(0.2, 0.4)], [], [(1.0, 1.5), (0.0, 0.1)]]
    secs = [3.0, 2.0, 1.2]
    mask = I.inpaint_mask(3, size, L, SR, secs, regions=per_item)
    for b in range(3):
        assert mask[b, 0].tolist() == _expected_latent_mask(per_item[b], secs[b], L)
    with pytest.raises(ValueError, match="per-item regions"):
        I.inpaint_mask(2, size, L, SR, [1.0, 1.0], regions=per_item)


def test_inpaint_mask_is_zero_beyond_each_duration():
    size = 40 * DS
    mask = I.inpaint_mask_samples(2, size, SR, [1.0, 2.0], regions=[])
    assert mask[0, :SR].all() and not mask[0, SR:].any()
    assert mask[1, : 2 * SR].all() and not mask[1, 2 * SR :].any()


def test_continuation_region():
    assert I.continuation_region(2.0, 4.0) == (2.0, 4.0)
    size, L = 32 * DS, 32
    mask = I.inpaint_mask(1, size, L, SR, [4.0], regions=[I.continuation_region(2.0, 4.0)])
    # keep exactly the latents whose frame starts inside the first 2 s
    assert mask[0, 0].tolist() == [1.0 if i * DS < 2 * SR else 0.0 for i in range(L)]
    with pytest.raises(ValueError, match="shorter than the requested duration"):
        I.continuation_region(4.0, 4.0)


def test_prebuilt_masks():
    size, L = 20 * DS, 20
    from_regions = I.inpaint_mask(1, size, L, SR, [1.5], regions=[(0.3, 0.9)])
    samples = I.regions_to_sample_mask([(0.3, 0.9)], size + 10 * DS, SR)  # longer than the window: cut
    for prebuilt in (samples, samples[None]):
        assert torch.equal(I.inpaint_mask(1, size, L, SR, [1.5], mask=prebuilt), from_regions)
    # (B, N) masks stay per item; a (1, N) mask is shared
    two = torch.stack([samples, torch.ones_like(samples)])
    out = I.inpaint_mask(2, size, L, SR, [1.5, 1.5], mask=two)
    assert torch.equal(out[0], from_regions[0]) and out[1, 0, : W.effective_length(1.5, SR, DS)].all()
    assert torch.equal(I.inpaint_mask(3, size, L, SR, [1.5] * 3, mask=samples[None]), from_regions.expand(3, -1, -1))
    with pytest.raises(ValueError, match="does not fit a batch"):
        I.inpaint_mask(3, size, L, SR, [1.5] * 3, mask=two)
    with pytest.raises(ValueError, match="exactly one"):
        I.inpaint_mask(1, size, L, SR, [1.5])


def test_mask_to_latents_takes_first_sample_of_each_frame():
    mask = torch.ones(1, 4 * DS)
    mask[0, DS] = 0  # first sample of frame 1
    mask[0, 2 * DS + 1 :] = 0  # all of frame 2 but its first sample, and frame 3
    assert I.mask_to_latents(mask, 4).tolist() == [[1.0, 0.0, 1.0, 0.0]]


# ------------------------------------------------------------------------------------------ validation


def test_per_item_broadcast_and_length_check():
    assert V.per_item("a", 3, "prompt") == ["a", "a", "a"]
    assert V.per_item([1.0, 2.0], 2, "duration") == [1.0, 2.0]
    with pytest.raises(ValueError, match="prompt has 2 values but batch_size is 3"):
        V.per_item(["a", "b"], 3, "prompt")


def test_validate_steps_and_init_noise_level():
    V.validate_steps(1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            V.validate_steps(bad)
    V.validate_init_noise_level(1.0)
    V.validate_init_noise_level(0.01)
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="init_noise_level"):
            V.validate_init_noise_level(bad)


def test_validate_durations():
    V.validate_durations([0.5, 120.0], 120.0)
    with pytest.raises(ValueError, match="positive"):
        V.validate_durations([1.0, 0.0], 120.0)
    with pytest.raises(ValueError, match="positive"):
        V.validate_durations([-2.0], 120.0)
    with pytest.raises(ValueError, match="maximum of 120.00 s"):
        V.validate_durations([121.0], 120.0)
    with pytest.raises(ValueError, match="finite"):
        V.validate_durations([float("inf")], 120.0)


def test_validate_regions():
    V.validate_regions([(0.0, 1.0), (2.0, 10.0)], 4.0)  # an end past the duration is clipped, not an error
    with pytest.raises(ValueError, match="must be after start"):
        V.validate_regions([(2.0, 1.0)], 4.0)
    with pytest.raises(ValueError, match="must be after start"):
        V.validate_regions([(1.0, 1.0)], 4.0)
    with pytest.raises(ValueError, match="negative"):
        V.validate_regions([(-0.5, 1.0)], 4.0)
    with pytest.raises(ValueError, match="at or after the end"):
        V.validate_regions([(4.0, 5.0)], 4.0)
    with pytest.raises(ValueError, match="expected"):
        V.validate_regions([(1.0,)], 4.0)  # type: ignore[list-item]
    # mask builders check regions against each item's own duration
    with pytest.raises(ValueError, match="item 1: inpaint region 0: starts at 2.5 s"):
        I.inpaint_mask(2, 40 * DS, 40, SR, [3.0, 2.0], regions=[(2.5, 2.9)])
    with pytest.raises(ValueError, match="must be after start"):
        I.inpaint_mask(2, 40 * DS, 40, SR, [3.0, 2.0], regions=[[(0.1, 0.2)], [(1.0, 0.5)]])


def test_validate_audio():
    V.validate_audio(torch.zeros(2, 10))
    with pytest.raises(ValueError, match="empty"):
        V.validate_audio(torch.zeros(2, 0))
    bad = torch.zeros(2, 10)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        V.validate_audio(bad)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        V.validate_audio(bad)


# ------------------------------------------------------------------------------------------ output


def test_zero_padding_after_decode():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    audio = torch.ones(2, 2, 3 * 4)
    out = O.zero_padding(audio, mask, 4)
    assert out[0].sum(dim=-1).tolist() == [8.0, 8.0] and out[1].sum(dim=-1).tolist() == [4.0, 4.0]
    longer = O.zero_padding(torch.ones(2, 2, 14), mask, 4)  # extra samples count as padding
    assert longer[..., 12:].abs().sum() == 0
    shorter = O.zero_padding(torch.ones(2, 2, 6), mask, 4)
    assert shorter.shape == (2, 2, 6) and shorter[0].sum() == 12


def test_peak_policies():
    audio = torch.tensor([[[2.0, -1.0, 0.5]], [[0.25, -0.5, 0.1]]], dtype=torch.float16)
    clamped = O.apply_peak_policy(audio, "clamp")
    assert clamped.dtype == torch.float32 and clamped[0].tolist() == [[1.0, -1.0, 0.5]]
    limited = O.apply_peak_policy(audio, "limit")
    assert limited[0].tolist() == [[1.0, -0.5, 0.25]]  # scaled by 1/2, nothing clipped
    assert torch.equal(limited[1], audio[1].float())  # quiet item untouched
    assert torch.equal(O.apply_peak_policy(audio, "none"), audio.float())
    for unknown in ("normalize", "attenuate"):  # "attenuate" was an alias of "limit"; the official API has neither
        with pytest.raises(ValueError, match="peak policy"):
            O.apply_peak_policy(audio, unknown)  # type: ignore[arg-type]


def test_trim_per_item():
    audio = torch.randn(3, 2, 4 * SR)
    durs = [3.0, 2.0, 1.5]
    items = O.trim_to_durations(audio, durs, SR)
    assert [t.shape[-1] for t in items] == [3 * SR, 2 * SR, int(1.5 * SR)]
    assert torch.equal(items[1], audio[1, :, : 2 * SR])
    padded, lengths = O.trim_padded(audio, durs, SR)
    assert padded.shape == (3, 2, 3 * SR) and lengths.tolist() == [3 * SR, 2 * SR, int(1.5 * SR)]
    assert (
        torch.equal(padded[2, :, : lengths[2]], audio[2, :, : lengths[2]])
        and padded[2, :, lengths[2] :].abs().sum() == 0
    )
    same, _ = O.trim_padded(audio, [2.5] * 3, SR)
    assert torch.equal(same, audio[:, :, : int(2.5 * SR)])  # equal durations: the official truncation
    with pytest.raises(ValueError, match="durations for a batch"):
        O.trim_to_durations(audio, durs[:2], SR)
