"""Fixtures for the tests that use the official model names: a Hugging Face cache holding tiny checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from official_assets import TINY_FOR, add_repo, base_config

from sa3_core.hub import MODEL_REPOS


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, fixtures_dir: Path) -> Path:
    """A hub cache with all six official SA3 repositories (tiny checkpoints); read-only for the tests."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    for name, repo_id in MODEL_REPOS.items():
        source = fixtures_dir / TINY_FOR[name]
        add_repo(cache, repo_id, source, config=base_config(source) if name == "medium-base" else None)
    return cache


@pytest.fixture
def official_cache(hub_cache: Path, monkeypatch) -> Path:
    """Make ``hub_cache`` the user's Hugging Face cache, as ``HF_HUB_CACHE`` does before Python starts (the
    hub reads the variable once at import: its constant is set too), with no models folder configured."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.delenv("SA3_MODELS_DIR", raising=False)
    return hub_cache
