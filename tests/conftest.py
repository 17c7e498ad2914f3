"""Shared pytest fixtures: where the golden fixtures live, and the table of every golden case's error.

The golden-case tests record each case's relative L2 errors with ``golden_report``; at the end of the run
the terminal summary lists every recorded case (whatever ``-r`` / ``-q`` say), so a run shows how close
each case came, not only that it passed.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# The golden fixtures are the official fp32 results, and the e2e tests compare a ComfyUI server (Loader "auto")
# with the Python API in this process: fix sa3_core's CPU dtype policy to fp32 for the whole run, in every
# process it starts, instead of measuring per process (the policy's rule is unit-tested with injected
# measurements, bf16 runs by asking for it).
os.environ.setdefault("SA3_CPU_DTYPE", "float32")

from tests.golden import TOLERANCE, CaseErrors
from tests.helpers import FIXTURES_DIR

_GOLDEN_ERRORS = pytest.StashKey[list[tuple[str, str, CaseErrors]]]()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    # The fixtures are the contract with the official implementation: a missing folder is a failure, not a skip.
    assert FIXTURES_DIR.is_dir(), f"golden fixtures not found at {FIXTURES_DIR} (expected ../shared beside the repo)"
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def golden_report(pytestconfig: pytest.Config) -> Callable[[str, str, CaseErrors], None]:
    """``record(set_name, case, errors)``: add one case's errors to the end-of-run table."""
    rows = pytestconfig.stash.setdefault(_GOLDEN_ERRORS, [])
    return lambda set_name, case, errors: rows.append((set_name, case, errors))


def _format(error: float | None) -> str:
    return "-" if error is None else f"{error:.2e}"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_GOLDEN_ERRORS, [])
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section(
        f"golden cases: relative L2 error against the official implementation (tolerance {TOLERANCE:g})"
    )
    write(f"{'set':<7} {'case':<30} {'latents':>9} {'audio':>9}")
    for set_name, case, errors in rows:
        verdict = "" if errors.worst() <= TOLERANCE else "  OVER TOLERANCE"
        notes = f"  ({', '.join(errors.notes)})" if errors.notes else ""
        write(f"{set_name:<7} {case:<30} {_format(errors.latents):>9} {_format(errors.audio):>9}{notes}{verdict}")
    for set_name in dict.fromkeys(name for name, _, _ in rows):
        mine = [(case, errors) for name, case, errors in rows if name == set_name]
        parts = []
        for kind in ("latents", "audio"):
            measured = [(getattr(errors, kind), case) for case, errors in mine if getattr(errors, kind) is not None]
            if measured:
                worst, case = max(measured)
                parts.append(f"max {kind} {worst:.2e} ({case})")
        over = sum(errors.worst() > TOLERANCE for _, errors in mine)
        write(f"{set_name}: {len(mine)} cases, {', '.join(parts)}, {over} over tolerance")
