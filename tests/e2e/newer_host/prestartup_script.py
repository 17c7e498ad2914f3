"""ComfyUI runs every custom node's prestartup_script.py before it imports any custom node: install the
newer-host emulation there, so the pack under test is imported into an already-emulated host."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # resolved through the custom_nodes symlink: tests/e2e/newer_host
sys.path[:0] = [str(_HERE), str(_HERE.parents[1])]  # emulation.py, and tests/ for newer_comfy_ops

import newer_host_emulation  # noqa: E402

newer_host_emulation.install()
