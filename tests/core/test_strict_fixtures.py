"""StableAudioModel.generate against the strict golden set (``../shared/fixtures/strict``).

The official implementation on tiny checkpoints whose every path matters (timestep, APG, padding mask,
inpaint branch, norm eps, every LoRA adapter type, odd SAME windows, ...): its README's mutation table shows
each case moving by >= 1e-2 under every regression it guards. Each case is reproduced through
``from_pretrained(folder).generate(**case)``, ``load_lora(..., dora_mode="official")`` and
``set_lora_strength``, within relative L2 1e-4 on latents and audio; the end-of-run summary lists every
case's errors (tests/conftest.py).
"""

from __future__ import annotations

import re

import pytest

from tests.golden import TOLERANCE, ModelCache, case_names, run_case
from tests.helpers import FIXTURES_DIR

STRICT_DIR = FIXTURES_DIR / "strict"
CASES = case_names(STRICT_DIR)


def readme_cases() -> list[str]:
    """The case names of the README's "Cases" table (first column)."""
    text = (STRICT_DIR / "README.md").read_text()
    table = text.split("| case | model |", 1)[1].split("\n\n", 1)[0]
    return sorted(re.findall(r"^\| ([a-z0-9_]+) \|", table, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def models() -> ModelCache:
    assert STRICT_DIR.is_dir(), f"strict golden fixtures not found at {STRICT_DIR}"
    return ModelCache(STRICT_DIR)


def test_every_strict_case_is_covered() -> None:
    assert len(CASES) == 52, CASES  # "Set public: 52 cases"
    assert CASES == readme_cases()


@pytest.mark.parametrize("case", CASES)
def test_strict_case_matches_official(case: str, models: ModelCache, golden_report) -> None:
    errors = run_case(models.for_case(case), STRICT_DIR, case)
    golden_report("strict", case, errors)
    assert errors.worst() <= TOLERANCE, errors
