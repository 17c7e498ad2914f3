"""ComfyUI runs every custom node's prestartup_script.py before it imports any custom node: install the
low-VRAM emulation there, so the pack under test loads its parts into an already-emulated host."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # resolved through the custom_nodes symlink

import lowvram_host_emulation  # noqa: E402

lowvram_host_emulation.install()
