"""The newest ComfyUI's behaviour towards custom nodes, emulated inside the real ComfyUI 0.3.75 host.

ComfyUI 0.38.x (Comfy-Org/ComfyUI, read through the search index; files and commits named below) cannot run
here: its dynamic VRAM needs ``comfy-aimdo``, CUDA and a newer torch. ``install()`` changes the 0.3.75 tree,
in its own process, so that it treats custom nodes as 0.38 does in each respect below; everything else
(execution, caching, ops casting, model management) stays 0.3.75's own code.

1. Lazy ``Linear`` (comfy/ops.py @0271a469): ``comfy.ops.disable_weight_init.Linear`` (and the classes that
   derive from it, e.g. ``manual_cast.Linear``) is constructed with ``weight = bias = None``; they appear in
   ``_load_from_state_dict``, in the dtype of the tensor given. The layer code is tests/newer_comfy_ops.py's
   (shared with tests/core). ``Conv1d`` stays eager, as upstream.
2. ``InterruptProcessingException`` derives from ``BaseException`` (comfy/model_management.py @02b2b388), so
   an ``except Exception`` no longer stops a Cancel.
3. Throttled progress (comfy/utils.py @09708eae): ``ProgressBar`` sends its first and last update and
   previews at once, other updates at most every 100 ms and 0.5 %.
4. ``ComfyExtension.on_load()`` is awaited before ``get_node_list()`` (nodes.py ``load_custom_node``).
5. A dynamic-VRAM ``CoreModelPatcher`` (comfy/model_patcher.py @08d0e510 ``ModelPatcherDynamic``, and
   comfy/lora.py @17358c8f): each load restores the previous load's copies, then
   - layers with ``comfy_cast_weights`` (the ``operations`` layers) above 16 KiB keep their weights in
     place and are cast at every forward; a weight patch on them is applied there, by a low-VRAM patch that,
     like upstream's, first checks ``comfy.lora.calculate_shape`` (``adapter.calculate_shape(key)``), then at
     each forward sizes the patches and stages their tensors in one buffer on the compute device
     (``memory_required``/``prepare`` -> ``prefetch_prepared_value``, which rebuilds every weight adapter
     as ``type(v)(v.loaded_keys, staged weights)``), applies them and drops the staged copy;
   - the weights of smaller such layers (patched if they have patches), of every other leaf module, and
     every buffer, are copied to the load device ("force loaded"; kept for the next restore);
   - the own parameters of non-leaf modules are moved in place.
   What it leaves out: the aimdo virtual VRAM (vbar), pinned host buffers and CUDA streams, which need a
   GPU. Upstream sends a CPU load device to the legacy ``ModelPatcher``; this emulation deliberately does
   not, so the dynamic protocol runs on this CPU-only machine.
6. The prompt's model tracker (comfy/model_patcher.py ``PromptModelTracker.add``, fed by execution.py's
   ``ExecutionList`` with every node output): the dynamic-VRAM models an output holds (a ModelPatcher, its
   ``.patcher``, or what its ``get_models()`` returns) are marked in use by the running prompt, so their
   pinned memory is evicted last. (Releasing the mark when the prompt ends is left out.)

Each patch logs a ``newer-host emulation:`` line when installed, and the patcher one per load and per
restore, with counters (lazily created layers loaded so far, streamed layers, patches, staged patch
applications), so the tests can check from the server log that the emulated paths ran.
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import json
import logging
import time

import torch

LOG_PREFIX = "newer-host emulation:"
STREAM_MIN_BYTES = 16 * 1024  # ModelPatcherDynamic.load force-loads layers of up to 16 KiB
PROGRESS_MIN_INTERVAL_S = 0.1  # comfy.utils.PROGRESS_THROTTLE_MIN_INTERVAL
PROGRESS_MIN_PERCENT = 0.5  # comfy.utils.PROGRESS_THROTTLE_MIN_PERCENT
VRAM_ALIGNMENT = 1024  # comfy.memory_management.vram_aligned_size

COUNTS: collections.Counter = collections.Counter()  # what the emulated paths saw, for the log lines


def log(message: str) -> None:
    logging.info("%s %s", LOG_PREFIX, message)


def install() -> None:
    _lazy_linear()
    _base_exception_interrupt()
    _throttled_progress()
    _on_load_before_get_node_list()
    _dynamic_core_model_patcher()
    _prompt_model_tracker()


# -- 1. lazy Linear --------------------------------------------------------------------------------


def _lazy_linear() -> None:
    import comfy.ops
    import newer_comfy_ops

    lazy = newer_comfy_ops.disable_weight_init.Linear
    linear = comfy.ops.disable_weight_init.Linear
    load_lazily = lazy._load_from_state_dict

    def _load_from_state_dict(self, *args, **kwargs):
        COUNTS["lazy layers loaded"] += 1
        return load_lazily(self, *args, **kwargs)

    linear.__init__ = lazy.__init__
    linear._load_from_state_dict = _load_from_state_dict
    log("comfy.ops.disable_weight_init.Linear is created with weight=None, bias=None (lazy)")


# -- 2. BaseException interrupt ----------------------------------------------------------------------


def _base_exception_interrupt() -> None:
    import comfy.model_management

    class InterruptProcessingException(BaseException):
        pass

    # execution.py and throw_exception_if_processing_interrupted look the name up at run time.
    comfy.model_management.InterruptProcessingException = InterruptProcessingException
    log("InterruptProcessingException derives from BaseException")


# -- 3. throttled progress ---------------------------------------------------------------------------


def _throttled_progress() -> None:
    import comfy.utils

    bar = comfy.utils.ProgressBar
    unthrottled_init = bar.__init__

    def __init__(self, total, node_id=None):
        unthrottled_init(self, total, node_id=node_id)
        self._last_update_time = 0.0
        self._last_sent_value = -1

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        value = min(value, self.total)
        self.current = value
        if self.hook is None:
            return
        now = time.perf_counter()
        send = preview is not None or self._last_sent_value < 0 or value >= self.total
        if not send:
            changed = 100 if self.total <= 0 else (value - max(0, self._last_sent_value)) / self.total * 100
            send = now - self._last_update_time >= PROGRESS_MIN_INTERVAL_S and changed >= PROGRESS_MIN_PERCENT
        if send:
            self.hook(self.current, self.total, preview, node_id=self.node_id)
            self._last_update_time = now
            self._last_sent_value = value
        else:
            COUNTS["progress updates held back"] += 1

    bar.__init__ = __init__
    bar.update_absolute = update_absolute
    log("ProgressBar updates are throttled (100 ms, 0.5 %)")


# -- 4. on_load ----------------------------------------------------------------------------------------


def _on_load_before_get_node_list() -> None:
    """0.3.75's loader only awaits ``get_node_list``; each extension class defined from now on awaits its
    ``on_load`` first, once, as the newest loader does."""
    from comfy_api.latest import ComfyExtension

    def __init_subclass__(cls, **kwargs):
        super(ComfyExtension, cls).__init_subclass__(**kwargs)
        if "get_node_list" not in vars(cls):
            return
        get_node_list = cls.get_node_list

        @functools.wraps(get_node_list)
        async def on_load_then_get_node_list(self):
            await self.on_load()
            log(f"{cls.__name__}: on_load awaited before get_node_list")
            return await get_node_list(self)

        cls.get_node_list = on_load_then_get_node_list

    ComfyExtension.__init_subclass__ = classmethod(__init_subclass__)
    log("ComfyExtension.on_load is awaited before get_node_list")


# -- 5. dynamic-VRAM CoreModelPatcher ------------------------------------------------------------------


def vram_aligned_size(tensor: torch.Tensor) -> int:
    return -(-tensor.numel() * tensor.element_size() // VRAM_ALIGNMENT) * VRAM_ALIGNMENT


def prefetch_prepared_value(value, counter: list[int], destination: torch.Tensor | None):
    """``comfy.lora.prefetch_prepared_value``: count (and with a destination, stage) every tensor of a patch;
    a weight adapter is rebuilt as ``type(v)(v.loaded_keys, weights)`` around the staged tensors."""
    from comfy.weight_adapter import WeightAdapterBase

    if isinstance(value, torch.Tensor):
        offset = counter[0]
        counter[0] += vram_aligned_size(value)
        if destination is None:
            return value
        staged = destination[offset : offset + value.numel() * value.element_size()].view(value.dtype).view(value.shape)
        staged.copy_(value)
        return staged
    if isinstance(value, WeightAdapterBase):
        COUNTS["adapters rebuilt"] += destination is not None
        return type(value)(value.loaded_keys, prefetch_prepared_value(value.weights, counter, destination))
    if isinstance(value, tuple):
        return tuple(prefetch_prepared_value(item, counter, destination) for item in value)
    if isinstance(value, list):
        return [prefetch_prepared_value(item, counter, destination) for item in value]
    return value


def calculate_shape(patches: list, weight: torch.Tensor, key: str):
    """``comfy.lora.calculate_shape``: the weight's shape after its patches."""
    from comfy.weight_adapter import WeightAdapterBase

    shape = weight.shape
    for patch in patches:
        value, offset = patch[1], patch[3]
        if offset is not None or isinstance(value, list):
            continue
        if isinstance(value, WeightAdapterBase):
            COUNTS["calculate_shape calls"] += 1
            shape = value.calculate_shape(key) or shape
        elif len(value) == 2 and value[0] == "diff" and len(value[1]) > 1 and value[1][1]["pad_weight"]:
            shape = value[1][0].shape
    return shape


class StagedLowVramPatch:
    """``LowVramPatch`` as ``comfy.ops`` drives it under dynamic VRAM, at every forward: ``memory_required``,
    ``prepare`` into a staging buffer on the weight's device, apply, ``clear_prepared``."""

    def __init__(self, key: str, patches: dict):
        self.key = key
        self.patches = patches

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        import comfy.lora

        size = [0]
        for patch in self.patches[self.key]:
            prefetch_prepared_value(patch[1], size, None)
        staging = torch.empty(size[0], dtype=torch.uint8, device=weight.device)
        offset = [0]
        prepared = [
            (p[0], prefetch_prepared_value(p[1], offset, staging), p[2], p[3], p[4]) for p in self.patches[self.key]
        ]
        COUNTS["staged patch applications"] += 1
        return comfy.lora.calculate_weight(prepared, weight, self.key, intermediate_dtype=weight.dtype)


def _dynamic_core_model_patcher() -> None:
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils

    Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])

    class EmulatedModelPatcherDynamic(comfy.model_patcher.ModelPatcher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.backup_buffers = {}

        def is_dynamic(self) -> bool:
            return True

        def set_in_use_by_current_prompt(self, in_use: bool) -> None:
            COUNTS["models marked in use by the prompt"] += in_use

        def clone(self, *args, **kwargs):
            n = super().clone(*args, **kwargs)
            n.backup_buffers = self.backup_buffers  # clones share their model's copies, as upstream
            return n

        def _restore_loaded_backups(self) -> int:
            restored = self.model.model_loaded_weight_memory
            for key in list(self.backup):
                comfy.utils.set_attr_param(self.model, key, self.backup.pop(key).weight)
            for key in list(self.backup_buffers):
                comfy.utils.set_attr(self.model, key, self.backup_buffers.pop(key))
            self.model.model_loaded_weight_memory = 0
            return restored

        def _force_load(self, key: str, device_to: torch.device, *, patched: bool) -> None:
            """A copy of the weight on the load device, with its patches when ``patched`` (upstream: only
            for layers with ``comfy_cast_weights``; other modules' weights move unpatched)."""
            weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
            if weight is None:
                return
            if patched and key in self.patches:
                self.patch_weight_to_device(key, device_to=device_to)  # keeps the backup itself
            else:
                self.backup.setdefault(key, Backup(weight, False))
                comfy.utils.set_attr_param(self.model, key, weight.to(device=device_to, copy=patched))
            weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
            self.model.model_loaded_weight_memory += weight.numel() * weight.element_size()

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            assert not force_patch_weights and not full_load and device_to == self.load_device
            self._restore_loaded_backups()
            streamed = staged = 0
            with self.use_ejected():
                for name, module in self.model.named_modules():
                    own = [n for n, _ in module.named_parameters(recurse=False)]
                    if len(own) != len(list(module.parameters())):  # not a leaf: its own parameters move
                        for param in module.parameters(recurse=False):
                            param.data = param.data.to(device=device_to)
                        continue
                    if not own and not hasattr(module, "comfy_cast_weights"):
                        continue
                    keys = {param: f"{name}.{param}" for param in own}
                    cast = hasattr(module, "comfy_cast_weights")
                    if cast:
                        module.comfy_cast_weights = True
                        module.weight_function, module.bias_function = [], []
                        streams = comfy.model_management.module_size(module) > STREAM_MIN_BYTES and all(
                            calculate_shape(self.patches[key], getattr(module, param), key)
                            == getattr(module, param).shape
                            for param, key in keys.items()
                            if key in self.patches
                        )
                        if streams:
                            streamed += 1
                            for param in ("weight", "bias"):
                                if param in keys and keys[param] in self.patches:
                                    getattr(module, f"{param}_function").append(
                                        StagedLowVramPatch(keys[param], self.patches)
                                    )
                                    staged += 1
                            keys = {p: k for p, k in keys.items() if p not in ("weight", "bias")}
                    for key in keys.values():
                        self._force_load(key, device_to, patched=cast)
                for key, buffer in self.model.named_buffers():
                    self.backup_buffers.setdefault(key, buffer)
                    comfy.utils.set_attr(self.model, key, buffer.to(device=device_to))
                self.model.device = device_to
                self.model.current_weight_patches_uuid = self.patches_uuid
            log(
                f"dynamic load {type(self.model).__name__}: {streamed} streamed layers, {staged} patches applied "
                f"at each forward, {len(self.backup)} force-loaded weights; "
                f"counts {json.dumps(dict(sorted(COUNTS.items())))}"
            )

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            assert not force_patch_weights
            with self.use_ejected(skip_and_inject_on_exit_only=True):
                self.unpatch_model(self.offload_device, unpatch_weights=False)
                self.patch_model(load_weights=False)
                try:
                    self.load(device_to)
                except Exception:
                    self.detach()
                    raise
                return None  # upstream: nothing meaningful to report under dynamic VRAM

        def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
            freed = self._restore_loaded_backups()
            log(f"dynamic restore {type(self.model).__name__}: {freed} bytes of force-loaded copies freed")
            return freed

        def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
            assert not load_weights  # upstream: only load_models_gpu loads a dynamic model
            return super().patch_model(load_weights=False, force_patch_weights=force_patch_weights)

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            super().unpatch_model(device_to=None, unpatch_weights=False)
            if unpatch_weights:
                self.partially_unload(None, 1e32)

    comfy.model_patcher.ModelPatcherDynamic = EmulatedModelPatcherDynamic
    comfy.model_patcher.CoreModelPatcher = EmulatedModelPatcherDynamic
    log("comfy.model_patcher.CoreModelPatcher is a dynamic-VRAM patcher (also for the CPU)")


# -- 6. the prompt's model tracker ---------------------------------------------------------------------


def _prompt_model_tracker() -> None:
    import comfy.model_patcher
    from comfy_execution.graph import ExecutionList

    def models_of(output) -> list:
        """``PromptModelTracker.add``'s reading of one node output."""
        if isinstance(output, collections.abc.Mapping):
            output = list(output.values())
        if isinstance(output, (list, tuple)):
            return [model for item in output for model in models_of(item)]
        if isinstance(output, comfy.model_patcher.ModelPatcher):
            return [output, *output.model_patches_models(), *output.get_additional_models()]
        models = []
        patcher = getattr(output, "patcher", None)
        if isinstance(patcher, comfy.model_patcher.ModelPatcher):
            models.append(patcher)
        get_models = getattr(output, "get_models", None)
        if callable(get_models):
            models.extend(get_models())
        return models

    cache_update = ExecutionList.cache_update

    def cache_update_tracking_models(self, node_id, value):
        for model in models_of(getattr(value, "outputs", value)):
            if getattr(model, "is_dynamic", lambda: False)():  # 0.3.75's own ModelPatcher has no is_dynamic
                model.set_in_use_by_current_prompt(True)
        return cache_update(self, node_id, value)

    ExecutionList.cache_update = cache_update_tracking_models
    log("every node output's dynamic-VRAM models are marked in use by the prompt")
