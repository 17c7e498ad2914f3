"""A GPU with a small VRAM budget, emulated inside the real ComfyUI 0.3.75 host on a CPU-only machine.

On a GPU, ``comfy.model_management.load_models_gpu`` gives each model it loads a weight budget
(``lowvram_model_memory``: the device's free memory less what inference needs, as ``--reserve-vram``,
``--lowvram`` or a busy card leave it) and ``ModelPatcher.load`` moves the biggest leaf modules that fit;
the rest stay on the offload device with ``comfy_cast_weights`` set (cast at every forward) and their
weight patches (LoRA) put into ``weight_function`` as ``LowVramPatch``es, applied at every forward. On
the CPU none of that runs: the load device is the CPU, so the VRAM state is DISABLED, the budget 0 and
every load a full one.

``install()`` changes one number, in its own process: when ``load_models_gpu`` was not asked for a full
load (``force_full_load``) and would load a model whole because its device is the CPU, the model gets the
budget a card with a fraction of the model's size free would give it (``SA3_LOWVRAM_BUDGET``, default
0.5; less what is loaded already, as ``load_models_gpu`` computes it; 0.1 byte when nothing is left, as
there), or with ``SA3_LOWVRAM_BUDGET=novram`` the 0.1 byte ComfyUI's ``--novram`` gives every model (all
its casting modules stay offloaded). Everything else
(``ModelPatcher.load``'s choice of modules, the casting, the LoRA patches at forward, unloading) is
0.3.75's own code. What it cannot show: the weights really living on another device (offload and compute
device are both the CPU here, so a module that fails to cast would still compute); tests/core/test_ops.py
checks that every tensor sits in a module that casts.

After each load it logs one ``lowvram-host emulation:`` line with what ``ModelPatcher.load`` did to the
part (budget, bytes loaded, the part's size, leaf modules loaded / left offloaded with cast weights /
left offloaded without casting, low-VRAM patches) and counters over the whole run (``LowVramPatch``
applications, forwards of modules left offloaded, by class; also logged at the first such forward of each
class), so the tests can check from the server log that the partial paths ran.
"""

from __future__ import annotations

import collections
import json
import logging
import os

LOG_PREFIX = "lowvram-host emulation:"
BUDGET = os.environ.get("SA3_LOWVRAM_BUDGET", "0.5")  # a fraction of each model's size, or "novram"
NO_VRAM_BUDGET = 0.1  # what load_models_gpu gives every model in ComfyUI's NO_VRAM state (--novram)

COUNTS: collections.Counter = collections.Counter()  # what ran at forward, over the whole server run


def log(message: str) -> None:
    logging.info("%s %s", LOG_PREFIX, message)


def install() -> None:
    import comfy.model_management as mm
    import comfy.model_patcher

    requested = {"full load": False}  # the force_full_load of the load_models_gpu call in progress
    load_models_gpu = mm.load_models_gpu
    model_load = mm.LoadedModel.model_load
    low_vram_patch = comfy.model_patcher.LowVramPatch.__call__

    def emulated_load_models_gpu(
        models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False
    ):
        requested["full load"] = force_full_load
        try:
            return load_models_gpu(
                models,
                memory_required=memory_required,
                force_patch_weights=force_patch_weights,
                minimum_memory_required=minimum_memory_required,
                force_full_load=force_full_load,
            )
        finally:
            requested["full load"] = False

    def emulated_model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        patcher = self.model
        budget = None
        if lowvram_model_memory == 0 and not requested["full load"]:  # 0: the CPU's "load it whole"
            if BUDGET == "novram":
                budget = lowvram_model_memory = NO_VRAM_BUDGET
            else:
                budget = int(float(BUDGET) * patcher.model_size())
                lowvram_model_memory = max(budget - self.model_loaded_memory(), 0) or 0.1
        loaded = model_load(self, lowvram_model_memory, force_patch_weights=force_patch_weights)
        log(
            f"load {type(patcher.model).__name__}: {json.dumps(load_report(patcher, budget))}; "
            f"counts {json.dumps(dict(sorted(COUNTS.items())))}"
        )
        return loaded

    def counted_low_vram_patch(self, weight):
        COUNTS["LowVramPatch applications"] += 1
        return low_vram_patch(self, weight)

    mm.load_models_gpu = emulated_load_models_gpu
    mm.LoadedModel.model_load = emulated_model_load
    comfy.model_patcher.LowVramPatch.__call__ = counted_low_vram_patch
    budget = "0.1 byte (novram)" if BUDGET == "novram" else f"{float(BUDGET):g} of its size"
    log(f"load_models_gpu gives each model a budget of {budget} unless force_full_load")


def load_report(patcher, budget: float | None) -> dict:
    """What ``ModelPatcher.load`` left in place, read from the marks it sets on each leaf module:
    ``comfy_patched_weights`` on the modules it moved, ``prev_comfy_cast_weights`` (and ``comfy_cast_weights``
    True) on those it left offloaded to be cast at forward. A leaf with weights and neither mark was left
    behind without casting (on a GPU: a device mismatch at forward)."""
    modules = collections.Counter()
    for _, _, _, module, params in patcher._load_list():
        if getattr(module, "comfy_patched_weights", False):
            modules["loaded"] += 1
        elif hasattr(module, "prev_comfy_cast_weights") and module.comfy_cast_weights:
            modules["offloaded, cast at forward"] += 1
            watch_forwards(module)
        elif params:
            modules["offloaded, not cast"] += 1
    return {
        "budget": budget,
        "loaded bytes": patcher.loaded_size(),
        "size": patcher.model_size(),
        "partial": bool(patcher.model.model_lowvram),
        "lowvram patches": patcher.lowvram_patch_counter(),
        "modules": dict(sorted(modules.items())),
    }


def watch_forwards(module) -> None:
    """Count the forwards of ``module`` while it is left offloaded (once per module, whatever the loads)."""
    if getattr(module, "_lowvram_emulation_watched", False):
        return
    module._lowvram_emulation_watched = True

    def count(module, args):
        if getattr(module, "comfy_cast_weights", False) and hasattr(module, "prev_comfy_cast_weights"):
            key = f"offloaded forwards: {type(module).__name__}"
            COUNTS[key] += 1
            if COUNTS[key] == 1:  # a kind's first forward may come after the last load of a prompt: log it
                run = json.dumps(dict(sorted(COUNTS.items())))
                log(f"first offloaded forward of a {type(module).__name__}; counts {run}")

    module.register_forward_pre_hook(count)
