"""Test-only ComfyUI custom node: a GPU with a small VRAM budget, emulated inside the CPU-only ComfyUI 0.3.75
host (see lowvram_host_emulation.py).

Its work happens in prestartup_script.py, before ComfyUI imports any custom node; as a custom node it
registers nothing (an empty mapping, so ComfyUI counts the import as a success).
"""

NODE_CLASS_MAPPINGS: dict = {}
