"""StableAudioModel.compile: opt-in torch.compile of the DiT and SAME blocks.

Inductor (the default backend) needs minutes of C++ compilation on this CPU, so the test traces the blocks
with dynamo's "eager" backend: that exercises everything compile changes on our side (tracing our
modules, the step constants and LoRA under dynamo, the state dict) while running the same kernels, so
the outputs must be identical. Inductor's speed and numerics are measured by bench/ab_dit.py and
bench/ab_decode.py (bench/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from sa3_core.pipeline import StableAudioModel

REQUEST = dict(prompt="a bell in a cathedral", duration=1.5, steps=3, seed=11, cfg_scale=2.0)


def test_compiled_blocks_give_the_same_audio(fixtures_dir: Path):
    eager = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
    expected = eager.generate(**REQUEST)
    keys = list(eager.dit.state_dict()) + list(eager.autoencoder.state_dict())

    torch._dynamo.reset()
    counters.clear()
    eager.compile(backend="eager")
    assert list(eager.dit.state_dict()) + list(eager.autoencoder.state_dict()) == keys  # no "_orig_mod." prefixes
    assert torch.equal(eager.generate(**REQUEST), expected)
    # Dynamo really captured graphs (one per block kind), with no graph breaks in our blocks.
    assert counters["stats"]["unique_graphs"] >= 2 and counters["stats"]["calls_captured"] > 0
    assert not counters["graph_break"]
    # A second request with another length compiles again and still matches an uncompiled model.
    other = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
    longer = dict(REQUEST, duration=2.5)
    assert torch.equal(eager.generate(**longer), other.generate(**longer))
    torch._dynamo.reset()


def test_unknown_part_is_refused(fixtures_dir: Path):
    model = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
    with pytest.raises(ValueError, match="unknown part"):
        model.compile(["text_encoder"])
