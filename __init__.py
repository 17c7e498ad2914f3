"""Stable Audio 3 for ComfyUI: the ComfyUI entry point (V3 ``comfy_entrypoint``), nothing else.

ComfyUI imports this folder as a package under its own name, so everything inside is imported
relatively (ComfyUI has a top-level module called ``nodes`` too). Outside ComfyUI (no ``comfy_api``),
importing the package defines no entry point; ``sa3_core`` works on its own.
"""

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import NODES
    from .nodes.example_inputs import install_example_inputs
    from .nodes.files import register_folders

    class StableAudio3Extension(ComfyExtension):
        async def get_node_list(self) -> list:
            # Here, not at import: ComfyUI 0.3.75 never calls ComfyExtension.on_load.
            register_folders()
            install_example_inputs()  # the clip the audio-input workflows load, into input/ (a local copy)
            return list(NODES)

    async def comfy_entrypoint() -> StableAudio3Extension:
        return StableAudio3Extension()
