"""Shared pytest fixtures: where the golden fixtures live."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    # The fixtures are the contract with the official implementation: a missing folder is a failure, not a skip.
    assert FIXTURES_DIR.is_dir(), f"golden fixtures not found at {FIXTURES_DIR} (expected ../shared beside the repo)"
    return FIXTURES_DIR
