"""StableAudioModel.generate against the official implementation's golden end-to-end cases.

Every case in ``../shared/fixtures/cases`` is reproduced from the official folder layout, with the official
keyword arguments, LoRA files and strength calls; latents and audio must match within relative L2 1e-4.
(The strict set, ``../shared/fixtures/strict``, is test_strict_fixtures.py; both read cases with tests/golden.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.golden import TOLERANCE, ModelCache, case_names, run_case
from tests.helpers import FIXTURES_DIR

CASES = case_names(FIXTURES_DIR)


@pytest.fixture(scope="module")
def models(fixtures_dir: Path) -> ModelCache:
    return ModelCache(fixtures_dir)


def test_every_fixture_case_is_covered() -> None:
    assert len(CASES) == 16, CASES  # the fixture README table lists 16 cases


@pytest.mark.parametrize("case", CASES)
def test_generate_matches_official(case: str, models: ModelCache, fixtures_dir: Path, golden_report) -> None:
    errors = run_case(models.for_case(case), fixtures_dir, case)
    golden_report("first", case, errors)
    assert errors.worst() <= TOLERANCE, errors


def test_lora_zero_equals_base_exactly(models: ModelCache, fixtures_dir: Path) -> None:
    model = models("tiny-small")
    kwargs = dict(prompt="warm techno bass", duration=2.0, steps=8, seed=77, return_latents=True)
    base = model.generate(**kwargs)
    model.load_lora([fixtures_dir / "loras" / "style_a_lora.safetensors"])
    try:
        model.set_lora_strength(0.0)
        assert torch.equal(model.generate(**kwargs), base)
        model.set_lora_strength(1.0)
        assert not torch.allclose(model.generate(**kwargs), base)
    finally:
        model.unload_lora()
    assert torch.equal(model.generate(**kwargs), base)
