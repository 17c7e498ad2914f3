"""Test-only ComfyUI custom node: newer-ComfyUI behaviour inside the ComfyUI 0.3.75 host (see emulation.py).

Its work happens in prestartup_script.py, before ComfyUI imports any custom node; as a custom node it
registers nothing (an empty mapping, so ComfyUI counts the import as a success).
"""

NODE_CLASS_MAPPINGS: dict = {}
