"""sa3_core is host-free: no module of it imports ComfyUI, statically or at run time.

ComfyUI's own top-level modules (comfy, comfy_api, comfy_extras, comfy_execution, folder_paths, nodes, server,
execution, latent_preview, node_helpers) must never be imported by the library; only nodes/ may.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SA3_CORE = REPO_ROOT / "sa3_core"
COMFY_MODULES = {
    "comfy",
    "comfy_api",
    "comfy_extras",
    "comfy_execution",
    "comfy_config",
    "folder_paths",
    "nodes",
    "server",
    "execution",
    "latent_preview",
    "node_helpers",
    "comfyui_version",
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file (relative imports stay inside sa3_core)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_sa3_core_module_imports_comfyui() -> None:
    files = sorted(SA3_CORE.rglob("*.py"))
    assert len(files) > 5  # the scan found the library
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(imported_modules(p) & COMFY_MODULES) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_sa3_core_loads_no_comfyui_module() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import sa3_core\n"
        "for info in pkgutil.walk_packages(sa3_core.__path__, 'sa3_core.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "sa3_core.pipeline" in loaded  # every module was really imported
    assert [m for m in loaded if m.split(".")[0] in COMFY_MODULES] == []
