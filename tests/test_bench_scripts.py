"""The benchmark scripts keep working (they are not timed here: figures come from running them, bench/README.md).

- ``bench.audit`` must find no wasted work: it fails CI if an optimisation regresses (a second DiT pass at
  cfg 1, a negative prompt encoded at cfg 1, constant conditioning recomputed per step, a full-length mask).
- ``bench.t2a`` must run end to end at the real small-music shapes (1 s, 1 step, tiny text encoder) and write
  a complete result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_audit_finds_no_wasted_work(fixtures_dir):
    out = run_module("bench.audit")
    verdicts = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()]
    assert verdicts.count("OK") >= 15, out
    assert "WASTE" not in verdicts, out


def test_t2a_runs_at_real_shapes(tmp_path):
    result = tmp_path / "t2a.json"
    out = run_module(
        "bench.t2a",
        "--variant",
        "small",
        "--seconds",
        "1",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--text-encoder",
        "tiny",
        "--no-warmup",
        "--json",
        str(result),
    )
    assert "| **total** |" in out
    data = json.loads(result.read_text())
    (row,) = data["rows"]
    for stage in ("text", "sampling", "decode"):
        figures = row["stages"][stage]
        assert figures["wall_s"] > 0 and figures["floor_gflop"] > 0 and figures["peak_rss_gib"] > 1, (stage, figures)
