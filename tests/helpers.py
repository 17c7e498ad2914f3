"""What many tests share: where the repository and the golden fixtures are, and the relative L2 error."""

from __future__ import annotations

from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT.parent / "shared" / "fixtures"  # the first golden set (../shared beside the repository)
STRICT_DIR = FIXTURES_DIR / "strict"  # the strict golden set


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64 (shapes must be equal: broadcasting would hide a bug)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()
