"""The workflows on a second ComfyUI 0.3.75 server whose model management loads every part partially, as
on a GPU with too little free VRAM (tests/e2e/lowvram_host/lowvram_host_emulation.py). Two budgets, one
server each: half of each part's size (ComfyUI's own ``ModelPatcher.load`` moves the biggest modules that
fit and leaves the others offloaded, cast at every forward, with their LoRA patches applied at every
forward), and ComfyUI's ``--novram`` budget (every casting module offloaded: every kind of layer, norm,
embedding and learned tensor computes from offloaded storage).

The checks are the 0.3.75 tier's own, called with this server (the same functions, so the tiers cannot
drift apart): text-to-audio and the LoRA stack workflow against the Python API, and LoRA branch isolation
(a LoRA clone, the plain model, the clone again: the low-VRAM patches must come and go with the clone).
Each also checks from the emulation's log that every part really was loaded partially.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sa3_server import test_lora_changes_only_its_own_branch as check_lora_branches
from test_sa3_workflows import PACK_FOLDER, REPO_ROOT, reference, workflow_reference_model  # noqa: F401 - fixtures
from test_sa3_workflows import test_api_workflow_matches_python_api as check_api_workflow

from comfy_host import ComfyClient, ComfyServer
from sa3_assets import install_sa3_assets

EMULATION_FOLDER = "sa3-lowvram-host-emulation"
EMULATION_DIR = Path(__file__).resolve().parent / "lowvram_host"
LOG_PREFIX = "lowvram-host emulation:"
BUDGETS = {"half": "0.5", "novram": "novram"}  # SA3_LOWVRAM_BUDGET for each server
INSTALLED = {
    "half": "load_models_gpu gives each model a budget of 0.5 of its size unless force_full_load",
    "novram": "load_models_gpu gives each model a budget of 0.1 byte (novram) unless force_full_load",
}
# The module classes that must have computed from offloaded storage in a text-to-audio run.
OFFLOADED_KINDS = {
    "half": ("Linear", "Conv1d", "RMSNorm", "LearnedTensor", "RotaryEmbedding"),
    "novram": (
        "Linear",
        "Conv1d",
        "RMSNorm",
        "LearnedTensor",
        "RotaryEmbedding",
        "DyT",
        "WeightNormConv1d",
        "T5GemmaRMSNorm",
        "Embedding",
        "PromptConditioner",
    ),
}
PARTS = ("SA3TextPart", "SA3DiTPart", "SA3VAEPart")
LORA_PARTS = ("SA3TextPart", "SA3DiTPart")  # the parts LoRAApply patches (conditioners, DiT)
# The parts whose LoRA patches are applied at forward (on modules left offloaded): under half the budget
# the conditioners' few patched layers fit and are patched in place, as in a full load.
PATCHED_AT_FORWARD = {"half": ("SA3DiTPart",), "novram": LORA_PARTS}
WORKFLOWS = ("sa3_text_to_audio", "sa3_lora_stack")

pytestmark = pytest.mark.lowvram_host


@pytest.fixture(scope="module", params=sorted(BUDGETS))
def budget(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def lowvram_server(
    budget: str,
    comfy_tree: Path,
    tmp_path_factory: pytest.TempPathFactory,
    sa3_tiny_model: Path,
    sa3_tiny_single_files: tuple[Path, Path],
    fixtures_dir: Path,
) -> Iterator[ComfyServer]:
    base_dir = tmp_path_factory.mktemp(f"comfyui-lowvram-host-{budget}")
    packs = {EMULATION_FOLDER: EMULATION_DIR, PACK_FOLDER: REPO_ROOT}
    server = ComfyServer(comfy_tree, base_dir, custom_nodes=packs)
    with pytest.MonkeyPatch.context() as env:  # the server process reads its budget at startup
        env.setenv("SA3_LOWVRAM_BUDGET", BUDGETS[budget])
        server.start()
    try:
        yield install_sa3_assets(server, sa3_tiny_model, sa3_tiny_single_files, fixtures_dir)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lowvram(lowvram_server: ComfyServer) -> ComfyClient:
    return ComfyClient(lowvram_server.url)


def emulation_lines(server: ComfyServer) -> list[str]:
    return [line.split(LOG_PREFIX, 1)[1].strip() for line in server.log_text().splitlines() if LOG_PREFIX in line]


def loads(server: ComfyServer) -> list[tuple[str, dict[str, Any], dict[str, int]]]:
    """Every load the emulation logged: (part class, what ModelPatcher.load did, run counters)."""
    found = []
    for line in emulation_lines(server):
        if line.startswith("load "):
            part, rest = line[len("load ") :].split(": ", 1)
            report, counts = rest.split("; counts ", 1)
            found.append((part, json.loads(report), json.loads(counts)))
    return found


def counts(server: ComfyServer) -> dict[str, int]:
    """The emulation's run counters as last logged (at a load, or at the first offloaded forward of a class)."""
    logged = [line for line in emulation_lines(server) if "; counts " in line]
    return json.loads(logged[-1].split("; counts ", 1)[1]) if logged else {}


def assert_loaded_partially(
    new_loads: list[tuple[str, dict[str, Any], dict[str, int]]],
    parts: tuple[str, ...],
    budget: str,
    patched: tuple[str, ...] = (),
) -> None:
    """Each of ``parts`` was loaded under its budget: fewer bytes than the part holds (none under novram),
    some leaf modules left offloaded with cast weights (under half, others loaded), none left without
    casting; the ``patched`` parts with LoRA patches at forward."""
    reports = {part: report for part, report, _ in new_loads}
    assert set(parts) <= set(reports), list(reports)
    for part in parts:
        report = reports[part]
        assert report["partial"] and report["budget"] is not None, (part, report)
        assert report["loaded bytes"] <= report["budget"] < report["size"], (part, report)
        assert report["modules"].get("offloaded, cast at forward", 0) > 0, (part, report)
        assert report["modules"].get("offloaded, not cast", 0) == 0, (part, report)
        if budget == "half":
            assert report["loaded bytes"] > 0 and report["modules"].get("loaded", 0) > 0, (part, report)
    for part in patched:
        assert reports[part]["lowvram patches"] > 0, (part, reports[part])


def test_the_small_budget_is_emulated_before_the_pack_loads(budget: str, lowvram_server: ComfyServer) -> None:
    assert not lowvram_server.import_failures()
    assert INSTALLED[budget] in emulation_lines(lowvram_server)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_api_workflow_matches_python_api(
    name: str,
    budget: str,
    lowvram_server: ComfyServer,
    lowvram: ComfyClient,
    reference: Any,  # noqa: F811 - fixture
) -> None:
    before = len(loads(lowvram_server))
    check_api_workflow(name, lowvram_server, lowvram, reference)
    new_loads = loads(lowvram_server)[before:]
    lora = name == "sa3_lora_stack"
    assert_loaded_partially(new_loads, PARTS, budget, patched=PATCHED_AT_FORWARD[budget] if lora else ())
    run = counts(lowvram_server)
    for kind in OFFLOADED_KINDS[budget]:  # over this server's run so far: text-to-audio runs first
        assert run.get(f"offloaded forwards: {kind}", 0) > 0, (kind, run)
    if lora:
        assert run.get("LowVramPatch applications", 0) > 0, run


def test_lora_changes_only_its_own_branch(
    budget: str, lowvram_server: ComfyServer, lowvram: ComfyClient, reference_model: Any, fixtures_dir: Path
) -> None:
    before = len(loads(lowvram_server))
    applied = counts(lowvram_server).get("LowVramPatch applications", 0)
    check_lora_branches(lowvram_server, lowvram, reference_model, fixtures_dir)
    new_loads = loads(lowvram_server)[before:]
    assert_loaded_partially(new_loads, LORA_PARTS, budget, patched=PATCHED_AT_FORWARD[budget])
    # The plain model's loads in between carried no LoRA patch: the clone's were dropped with it.
    plain = [report for part, report, _ in new_loads if part in LORA_PARTS and report["lowvram patches"] == 0]
    assert plain, [report for _, report, _ in new_loads]
    assert counts(lowvram_server)["LowVramPatch applications"] > applied
