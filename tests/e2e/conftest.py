"""The e2e tier: one real ComfyUI 0.3.75 server (and one headless browser on its frontend) per pytest session.

The pack under test is this repository, symlinked into the server's custom_nodes/ as `comfyui-stable-audio-3`.
Every test in this folder is marked `e2e` automatically, so `pytest -m "not e2e"` runs the host-free tiers only.
The ComfyUI tree is copied once to $SA3_E2E_CACHE (default ~/.cache/sa3-e2e) and reused across sessions.
test_newer_host.py starts a second server from the same tree, with the newest ComfyUI's behaviour emulated
(tests/e2e/newer_host); test_lowvram_host.py one whose model management loads every part partially, as on
a GPU short of VRAM (tests/e2e/lowvram_host).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfy_host import ComfyClient, ComfyServer, prepare_comfy_tree
from frontend import ComfyFrontend
from sa3_assets import SA3_MODEL_NAME, SA3_SINGLE_FILE, SA3_TEXT_ENCODER_FILE, install_sa3_assets

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parents[1]
PACK_FOLDER = "comfyui-stable-audio-3"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _cache_dir() -> Path:
    if "SA3_E2E_CACHE" in os.environ:
        return Path(os.environ["SA3_E2E_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sa3-e2e"


@pytest.fixture(scope="session")
def comfy_tree() -> Path:
    return prepare_comfy_tree(_cache_dir())


@pytest.fixture(scope="session")
def comfy_server(comfy_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """The running server. Put test models in with `comfy_server.link("models/<folder>/<file>", source)`."""
    base_dir = tmp_path_factory.mktemp("comfyui-base")
    with ComfyServer(comfy_tree, base_dir, custom_nodes={PACK_FOLDER: REPO_ROOT}) as server:
        yield server


@pytest.fixture(scope="session")
def comfy(comfy_server: ComfyServer) -> ComfyClient:
    return ComfyClient(comfy_server.url)


@pytest.fixture(scope="session")
def object_info(comfy: ComfyClient) -> dict[str, Any]:
    """The server's full /object_info (node definitions as the frontend sees them)."""
    return comfy.object_info()


@pytest.fixture(scope="session")
def frontend(comfy_server: ComfyServer) -> Iterator[ComfyFrontend]:
    """A headless Chromium page on the real frontend, ready for `load_workflow`."""
    with ComfyFrontend(comfy_server.url) as ui:
        yield ui


# --------------------------------------------------------------------------------------------------------------
# The pack's test models, placed in the server's folders under the names the example workflows use
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sa3_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight SA3 model folder in the official layout (sa3_core.tiny)."""
    from sa3_core.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("sa3-models") / SA3_MODEL_NAME, "small", seed=0)


@pytest.fixture(scope="session")
def sa3_tiny_single_files(sa3_tiny_model: Path) -> tuple[Path, Path]:
    """The same tiny model in the Comfy-Org layout: (model file, T5Gemma file), under the Comfy-Org names."""
    from sa3_core.tiny import write_tiny_single_files

    folder = sa3_tiny_model.parent
    return write_tiny_single_files(sa3_tiny_model, folder / SA3_SINGLE_FILE, folder / SA3_TEXT_ENCODER_FILE)


@pytest.fixture(scope="session")
def sa3_server(
    comfy_server: ComfyServer, sa3_tiny_model: Path, sa3_tiny_single_files: tuple[Path, Path], fixtures_dir: Path
) -> ComfyServer:
    """The server with the pack's test models and clip (install_sa3_assets)."""
    return install_sa3_assets(comfy_server, sa3_tiny_model, sa3_tiny_single_files, fixtures_dir)


@pytest.fixture(scope="session")
def reference_model(sa3_tiny_model: Path) -> Any:
    """The tiny model's official folder through the Python API, in float32: what the Loader's dtype "auto"
    picks in this test session (tests/conftest.py pins the CPU precision policy to float32)."""
    import torch  # here, not at the top: the developer tools beside this file import it without sa3_core on the path

    from sa3_core.pipeline import StableAudioModel

    return StableAudioModel.from_pretrained(sa3_tiny_model, device="cpu", dtype=torch.float32)
