"""Dtype policy per device (sa3_core.precision) and its wiring into loading and generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sa3_core import pipeline
from sa3_core.checkpoint import load_components
from sa3_core.pipeline import StableAudioModel
from sa3_core.precision import ComponentDtypes, component_dtypes

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

POLICY = [
    # device, requested dtype -> dit (and conditioners), autoencoder
    ("cpu", None, (F32, F32)),  # fp32 on CPU by default
    ("cuda", None, (F16, F16)),  # the official model_half on CUDA
    ("mps", None, (F32, F32)),  # the official code turns half off without CUDA
    ("cuda", BF16, (BF16, BF16)),
    ("cpu", BF16, (BF16, BF16)),  # honoured when asked (bench/README.md: slower on this CPU)
    ("mps", F16, (F16, F16)),  # fp16 SAME on MPS is fine
    ("mps", BF16, (BF16, F32)),  # never bf16 SAME on MPS: it decodes to noise there
]


@pytest.mark.parametrize("device,requested,expected", POLICY)
def test_component_dtypes_policy(device, requested, expected):
    assert component_dtypes(device, requested) == ComponentDtypes(*expected)


class Captured(Exception):
    """Raised by the fake loader once it has seen its arguments."""


def test_from_pretrained_applies_the_policy_for_the_target_device(monkeypatch, fixtures_dir: Path):
    """from_pretrained asks load_components for fp32 SAME when bf16 is requested on MPS (checked without a Mac:
    the loader is replaced before anything touches the device)."""
    seen = {}

    def fake_load_components(path, **kwargs):
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(pipeline, "load_components", fake_load_components)
    with pytest.raises(Captured):
        StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="mps", dtype=BF16)
    assert (seen["device"], seen["dtype"], seen["autoencoder_dtype"]) == (torch.device("mps"), BF16, F32)

    with pytest.raises(Captured):
        StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cuda")
    assert (seen["dtype"], seen["autoencoder_dtype"]) == (F16, F16)


def test_mixed_precision_model_generates(fixtures_dir: Path):
    """A bf16 DiT with an fp32 SAME (the MPS bf16 layout) loads and generates finite float32 audio; the latents
    cross from the DiT's dtype to SAME's."""
    components = load_components(fixtures_dir / "tiny-small", device="cpu", dtype=BF16, autoencoder_dtype=F32)
    assert {p.dtype for p in components.dit.parameters()} == {BF16}
    assert {p.dtype for p in components.autoencoder.parameters()} == {F32}
    assert {p.dtype for p in components.conditioners.parameters()} == {BF16}  # the conditioners follow the DiT
    model = StableAudioModel(components, device="cpu", dtype=BF16)
    audio = model.generate("rain on a tin roof", duration=1.0, steps=2, seed=3)
    assert audio.dtype == F32 and audio.shape[:2] == (1, 2)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0
