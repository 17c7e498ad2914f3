"""SAME autoencoder: parity with the official outputs, checkpoint layout, and the chunking scheme."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sa3_core.config import ModelConfig
from sa3_core.same import SAMEAutoencoder, plan_chunks
from tests.helpers import relative_l2

PREFIX = "pretransform.model."
TOLERANCE = 1e-4  # relative L2, the team-wide parity bound


@cache
def _tiny_same(folder: str) -> SAMEAutoencoder:
    """A tiny fixture model's autoencoder, loaded strictly from its ``pretransform.model.*`` tensors."""
    cfg = ModelConfig.from_json(Path(folder) / "model_config.json").autoencoder
    model = SAMEAutoencoder(cfg, device=torch.device("cpu"), dtype=torch.float32).eval().requires_grad_(False)
    tensors = load_file(str(Path(folder) / "model.safetensors"))
    state = {key[len(PREFIX) :]: value for key, value in tensors.items() if key.startswith(PREFIX)}
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(params=["small", "medium"])
def variant(request) -> str:
    return request.param


@pytest.fixture
def tiny(fixtures_dir: Path, variant: str) -> SAMEAutoencoder:
    return _tiny_same(str(fixtures_dir / f"tiny-{variant}"))


@pytest.fixture
def components(fixtures_dir: Path, variant: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((fixtures_dir / "components" / f"tiny-{variant}.json").read_text())
    tensors = load_file(str(fixtures_dir / "components" / f"tiny-{variant}.safetensors"))
    return meta, {k: v for k, v in tensors.items() if k.startswith("same.")}


# --- parity with the official implementation ---------------------------------------------------------


def test_encode_matches_official(tiny, components):
    _, ref = components
    latents = tiny.encode(ref["same.waveform"])
    assert latents.shape == ref["same.latents"].shape
    assert relative_l2(latents, ref["same.latents"]) <= TOLERANCE


def test_decode_matches_official(tiny, components):
    _, ref = components
    audio = tiny.decode(ref["same.latents"])
    assert audio.shape == ref["same.decoded"].shape
    assert relative_l2(audio, ref["same.decoded"]) <= TOLERANCE


def test_chunked_encode_and_decode_match_official(tiny, components):
    meta, ref = components
    sizes = {
        "chunk_size": meta["same_chunking"]["chunk_size_latents"],
        "overlap": meta["same_chunking"]["overlap_latents"],
    }
    latents = tiny.encode_audio(ref["same.waveform"], chunked=True, **sizes)
    assert latents.shape == ref["same.latents_chunked"].shape
    assert relative_l2(latents, ref["same.latents_chunked"]) <= TOLERANCE
    audio = tiny.decode_audio(ref["same.latents"], chunked=True, **sizes)
    assert audio.shape == ref["same.decoded_chunked"].shape
    assert relative_l2(audio, ref["same.decoded_chunked"]) <= TOLERANCE


# --- checkpoint layout at the real sizes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_name", "shapes_name", "encoder_params", "decoder_params"),
    [
        ("small-music_model_config.reconstructed.json", "small_state_dict_shapes.json", 53_728_792, 54_515_224),
        ("medium_model_config.reconstructed.json", "medium_state_dict_shapes.json", 426_063_664, 426_062_896),
    ],
)
def test_real_size_layout_matches_checkpoint(fixtures_dir, config_name, shapes_name, encoder_params, decoder_params):
    real = fixtures_dir / "real_shapes"
    cfg = ModelConfig.from_json(real / config_name).autoencoder
    model = SAMEAutoencoder(cfg, device=torch.device("meta"))
    expected = {
        key[len(PREFIX) :]: shape
        for key, shape in json.loads((real / shapes_name).read_text()).items()
        if key.startswith(PREFIX)
    }
    actual = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert sorted(actual) == sorted(expected)
    mismatched = {name: (actual[name], expected[name]) for name in expected if actual[name] != expected[name]}
    assert not mismatched
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder_params
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder_params
    assert sum(p.numel() for p in model.bottleneck.parameters()) == 513


def test_rope_frequencies_are_persistent_checkpoint_buffers(fixtures_dir):
    model = _tiny_same(str(fixtures_dir / "tiny-small"))
    key = "decoder.layers.3.transformers.0.rope.inv_freq"
    with safe_open(str(fixtures_dir / "tiny-small" / "model.safetensors"), "pt") as f:
        stored = f.get_tensor(PREFIX + key)
    assert torch.equal(model.state_dict()[key], stored)


# --- lengths and the chunking scheme ------------------------------------------------------------------


def test_plan_chunks_follows_the_official_layout():
    # 40 latents, chunk 16, overlap 4: starts 0, 12, 24; each inner edge drops 2 latents.
    spans = plan_chunks(40, 16, 4)
    assert [(s.start, s.keep_start, s.keep_end) for s in spans] == [(0, 0, 14), (12, 14, 26), (24, 26, 40)]
    # The end-anchored last chunk overlaps more; it overwrites (wins) its whole kept range.
    spans = plan_chunks(300, 128, 32)
    assert [(s.start, s.keep_start, s.keep_end) for s in spans] == [(0, 0, 112), (96, 112, 188), (172, 188, 300)]
    # Odd overlap: neighbours' kept ranges overlap by one latent and the later chunk wins.
    spans = plan_chunks(30, 10, 3)
    assert [(s.keep_start, s.keep_end) for s in spans] == [(0, 8), (8, 15), (15, 21), (21, 30)]
    for total, chunk, overlap in [(40, 16, 4), (300, 128, 32), (30, 10, 3), (128, 128, 32), (129, 128, 0)]:
        spans = plan_chunks(total, chunk, overlap)
        assert spans[0].keep_start == 0 and spans[-1].keep_end == total
        assert all(a.keep_end == b.keep_start for a, b in zip(spans, spans[1:]))
        assert all(s.start <= s.keep_start < s.keep_end <= s.start + s.size for s in spans)
    with pytest.raises(ValueError):
        plan_chunks(40, 16, 16)


def test_long_chunked_decode_equals_unchunked(fixtures_dir):
    model = _tiny_same(str(fixtures_dir / "tiny-medium"))
    latents = torch.randn(1, 256, 300, generator=torch.Generator().manual_seed(0))
    whole = model.decode(latents)
    seen = []
    chunked = model.decode_audio(latents, chunked=True, progress=lambda done, total: seen.append((done, total)))
    assert chunked.shape == whole.shape == (1, 2, 300 * 4096)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    # SAME-L's receptive field (one latent per layer) is far inside the 16-latent trim, so the only
    # difference is float32 rounding of RoPE angles: the whole sequence uses positions up to 5100, a
    # chunk restarts at 0. The official code shows the same gap here (1.26e-5); at 40 latents it is < 2e-6.
    assert relative_l2(chunked, whole) <= 3e-5
    short = latents[..., :40]
    assert relative_l2(model.decode_audio(short, chunked=True, chunk_size=16, overlap=4), model.decode(short)) <= 2e-6
    pieces = list(model.iter_decode_audio(latents))
    assert [first for first, _ in pieces] == [0, 112 * 4096, 188 * 4096]
    assert torch.equal(torch.cat([piece for _, piece in pieces], dim=-1), chunked)


def test_odd_latent_lengths_follow_the_official_padding(fixtures_dir):
    small = _tiny_same(str(fixtures_dir / "tiny-small"))
    medium = _tiny_same(str(fixtures_dir / "tiny-medium"))
    generator = torch.Generator().manual_seed(1)
    odd = torch.randn(1, 256, 5, generator=generator)
    # SAME-S decodes whole 2-latent chunks and, like the official code, keeps the padded tail.
    assert small.decode(odd).shape == (1, 2, 6 * 4096)
    assert small.decode(odd[..., :4]).shape == (1, 2, 4 * 4096)
    assert medium.decode(odd).shape == (1, 2, 5 * 4096)
    # The chunked path always returns exactly 4096 samples per latent (every chunk is cut to its range).
    long_odd = torch.randn(1, 256, 41, generator=generator)
    assert small.decode_audio(long_odd, chunked=True, chunk_size=16, overlap=4).shape == (1, 2, 41 * 4096)
    # Encoding pads audio to whole chunks (SAME-S: 2 latents) or whole latents (SAME-L).
    audio = torch.randn(1, 2, 3 * 4096 - 100, generator=generator)
    assert small.encode(audio).shape == (1, 256, 4)
    assert medium.encode(audio).shape == (1, 256, 3)
    long_audio = torch.randn(1, 2, 41 * 4096 - 100, generator=generator)
    assert small.encode_audio(long_audio, chunked=True, chunk_size=16, overlap=4).shape == (1, 256, 41)
    # encoded_length predicts every such length (an odd window's inpaint conditioning has that length).
    for model in (small, medium):
        for samples in (3 * 4096 - 100, 5 * 4096, 41 * 4096 - 100):
            for chunked in (False, True):
                encoded = model.encode_audio(long_audio[..., :samples], chunked=chunked, chunk_size=16, overlap=4)
                assert model.encoded_length(samples, chunked=chunked, chunk_size=16) == encoded.shape[-1]
    assert small.encoded_length(5 * 4096, chunked=False) == 6


def test_short_input_is_not_chunked(fixtures_dir):
    model = _tiny_same(str(fixtures_dir / "tiny-small"))
    latents = torch.randn(1, 256, 6, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model.decode_audio(latents, chunked=True, chunk_size=16, overlap=4), model.decode(latents))
    audio = torch.randn(1, 2, 6 * 4096, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.encode_audio(audio, chunked=True, chunk_size=16, overlap=4), model.encode(audio))


def test_attention_backends_agree_on_the_sliding_window(fixtures_dir):
    # "band" (the default off CUDA) and "sdpa" (a dense N x N band mask) are both exact window attention.
    model = SAMEAutoencoder(ModelConfig.from_json(fixtures_dir / "tiny-medium" / "model_config.json").autoencoder)
    model.load_state_dict(_tiny_same(str(fixtures_dir / "tiny-medium")).state_dict())
    latents = torch.randn(1, 256, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        band = model.decode(latents)
        model.set_attention_backend("sdpa")
        dense = model.decode(latents)
    assert relative_l2(band, dense) <= 1e-5  # float32 rounding only
    with pytest.raises(ValueError):
        model.set_attention_backend("xformers")
