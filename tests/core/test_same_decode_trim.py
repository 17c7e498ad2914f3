"""Trimmed chunked decoding (``SAMEAutoencoder.decode_audio(trim=True)``): SAME-S decodes each official
chunk's kept range plus its receptive field instead of the whole chunk. Same bits, less work."""

from __future__ import annotations

import json

import pytest
import torch

from sa3_core.checkpoint import PRESETS_DIR
from sa3_core.config import ModelConfig
from sa3_core.same import SAMEAutoencoder


def _same(variant: str, channels: int = 32) -> SAMEAutoencoder:
    """The real SAME-S / SAME-L layout (depth, chunking or window, conv mapping), narrowed for speed,
    with every parameter random so that every path matters."""
    data = json.loads((PRESETS_DIR / f"{variant}.json").read_text())
    for side in ("encoder", "decoder"):
        data["model"]["pretransform"]["config"][side]["config"]["channels"] = channels
    config = ModelConfig.from_dict(data, source=f"narrow {variant}").autoencoder
    torch.manual_seed(0)
    model = SAMEAutoencoder(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if param.dim() <= 1 else 0.0))
    return model.eval()


class _DecodedLatents:
    def __init__(self, model: SAMEAutoencoder):
        self.lengths: list[int] = []
        model.decoder.register_forward_pre_hook(lambda mod, args: self.lengths.append(args[0].shape[-1]))


@pytest.mark.parametrize("latents", [60, 61])  # odd: the official last chunk starts off the 2-latent grid
def test_same_s_trimmed_decode_is_bit_identical_and_decodes_less(latents: int) -> None:
    model = _same("small")
    assert model.decoder.layers[3].decode_halo() == 6
    z = torch.randn(1, 256, latents, generator=torch.Generator().manual_seed(latents))
    counter = _DecodedLatents(model)
    with torch.inference_mode():
        full = model.decode_audio(z, chunked=True, chunk_size=32, overlap=16, trim=False)
        full_lengths, counter.lengths = counter.lengths, []
        trimmed = model.decode_audio(z, chunked=True, chunk_size=32, overlap=16, trim=True)
    assert torch.equal(trimmed, full)
    assert len(counter.lengths) == len(full_lengths)  # the same chunks, each one smaller or equal
    assert all(t <= f for t, f in zip(counter.lengths, full_lengths))
    assert sum(counter.lengths) < sum(full_lengths)
    assert all(t % 2 == 0 for t in counter.lengths)  # pieces stay on the 2-latent chunk grid


def test_same_l_is_not_trimmed() -> None:
    # SAME-L's RoPE runs over the whole piece: another start would change the rounding, so no trimming.
    model = _same("medium")
    assert model.decoder.layers[3].decode_halo() is None
    z = torch.randn(1, 256, 40, generator=torch.Generator().manual_seed(1))
    counter = _DecodedLatents(model)
    with torch.inference_mode():
        full = model.decode_audio(z, chunked=True, chunk_size=16, overlap=4, trim=False)
        full_lengths, counter.lengths = counter.lengths, []
        trimmed = model.decode_audio(z, chunked=True, chunk_size=16, overlap=4, trim=True)
    assert torch.equal(trimmed, full) and counter.lengths == full_lengths == [16] * len(full_lengths)
