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
        async def on_load(self) -> None:
            register_folders()  # newer ComfyUI calls on_load before get_node_list

        async def get_node_list(self) -> list:
            register_folders()  # again (it is idempotent): ComfyUI 0.3.75 never calls on_load
            install_example_inputs()  # the clip the audio-input workflows load, into input/ (a local copy)
            return list(NODES)

    async def comfy_entrypoint() -> StableAudio3Extension:
        return StableAudio3Extension()
