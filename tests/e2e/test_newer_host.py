"""The e2e checks on a second ComfyUI 0.3.75 server that behaves as the newest ComfyUI (0.38.x) towards
custom nodes: lazy ``Linear`` layers, a dynamic-VRAM ``CoreModelPatcher`` that applies LoRA patches at each
forward through rebuilt weight adapters, the prompt's model tracker, a ``BaseException`` interrupt, throttled
progress and ``on_load`` (tests/e2e/newer_host/newer_host_emulation.py says what each emulation does and
leaves out).

The checks are the ones the 0.3.75 tier runs, called with this server (the same functions, so the two tiers
cannot drift apart): a representative subset of the example workflows against the Python API (plain
text-to-audio; inpainting, which also encodes audio; the LoRA stack), the LoRA branch isolation and
Cancel. The rest of the e2e tier only exercises code these already reach.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sa3_server import test_interrupt_stops_sampling_and_the_next_prompt_runs as check_interrupt
from test_sa3_server import test_lora_changes_only_its_own_branch as check_lora_branches
from test_sa3_workflows import PACK_FOLDER, REPO_ROOT, reference, workflow_reference_model  # noqa: F401 - fixtures
from test_sa3_workflows import test_api_workflow_matches_python_api as check_api_workflow

from comfy_host import ComfyClient, ComfyServer
from sa3_assets import install_sa3_assets

EMULATION_FOLDER = "sa3-newer-host-emulation"
EMULATION_DIR = Path(__file__).resolve().parent / "newer_host"
LOG_PREFIX = "newer-host emulation:"
INSTALLED = (
    "comfy.ops.disable_weight_init.Linear is created with weight=None, bias=None (lazy)",
    "InterruptProcessingException derives from BaseException",
    "ProgressBar updates are throttled (100 ms, 0.5 %)",
    "ComfyExtension.on_load is awaited before get_node_list",
    "comfy.model_patcher.CoreModelPatcher is a dynamic-VRAM patcher (also for the CPU)",
    "every node output's dynamic-VRAM models are marked in use by the prompt",
)
WORKFLOWS = ("sa3_text_to_audio", "sa3_inpainting", "sa3_lora_stack")

pytestmark = pytest.mark.newer_host


@pytest.fixture(scope="module")
def newer_server(
    comfy_tree: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sa3_tiny_model: Path,
    sa3_tiny_single_files: tuple[Path, Path],
    fixtures_dir: Path,
) -> Iterator[ComfyServer]:
    base_dir = tmp_path_factory.mktemp("comfyui-newer-host")
    packs = {EMULATION_FOLDER: EMULATION_DIR, PACK_FOLDER: REPO_ROOT}
    with ComfyServer(comfy_tree, base_dir, custom_nodes=packs) as server:
        yield install_sa3_assets(server, sa3_tiny_model, sa3_tiny_single_files, fixtures_dir)


@pytest.fixture(scope="module")
def newer(newer_server: ComfyServer) -> ComfyClient:
    return ComfyClient(newer_server.url)


def emulation_lines(server: ComfyServer) -> list[str]:
    return [line.split(LOG_PREFIX, 1)[1].strip() for line in server.log_text().splitlines() if LOG_PREFIX in line]


def emulation_counts(server: ComfyServer) -> dict[str, int]:
    """The emulation's counters as its last dynamic-VRAM load logged them (none before the first load)."""
    loads = [line for line in emulation_lines(server) if line.startswith("dynamic load ")]
    return json.loads(loads[-1].split("counts ", 1)[1]) if loads else {}


def test_the_newer_host_is_emulated_before_the_pack_loads(newer_server: ComfyServer) -> None:
    assert not newer_server.import_failures()
    lines = emulation_lines(newer_server)
    assert all(line in lines for line in INSTALLED), lines
    assert "StableAudio3Extension: on_load awaited before get_node_list" in lines


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_workflow_matches_python_api(
    name: str,
    newer_server: ComfyServer,
    newer: ComfyClient,
    reference: Any,  # noqa: F811 - the fixture
) -> None:
    check_api_workflow(name, newer_server, newer, reference)
    counts = emulation_counts(newer_server)
    assert counts.get("lazy layers loaded", 0) > 0  # the model really was built from lazy Linear layers
    assert counts.get("models marked in use by the prompt", 0) > 0  # SA3_MODEL outputs name their patchers


def test_lora_changes_only_its_own_branch(
    newer_server: ComfyServer, newer: ComfyClient, reference_model: Any, fixtures_dir: Path
) -> None:
    before = emulation_counts(newer_server)
    check_lora_branches(newer_server, newer, reference_model, fixtures_dir)
    counts = emulation_counts(newer_server)
    # The LoRA weights were applied at forward time, through adapters rebuilt from (loaded_keys, weights).
    for name in ("calculate_shape calls", "adapters rebuilt", "staged patch applications"):
        assert counts.get(name, 0) > before.get(name, 0), (name, counts)


def test_interrupt_stops_sampling_and_the_next_prompt_runs(newer_server: ComfyServer, newer: ComfyClient) -> None:
    check_interrupt(newer_server, newer)
