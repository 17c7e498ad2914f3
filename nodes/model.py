"""The SA3_MODEL wire: a StableAudioModel whose weights ComfyUI's model management owns.

Loading
    ``sa3_core.checkpoint.load_components`` builds the DiT and SAME with ``comfy.ops.disable_weight_init``
    layers (interruptible, and ComfyUI can cast them) on the offload device, in the chosen dtype. The
    ``StableAudioModel`` stage methods are then used unchanged: the nodes call exactly what ``generate``
    calls.

Three ModelPatchers, one per stage, so each stage only holds the weights it needs
    ``text``  T5Gemma encoder + the SA3 conditioners   (TextEncode)
    ``dit``   the diffusion transformer                 (RFSampler)
    ``vae``   the SAME autoencoder                      (InitAudioEncode, InpaintMask, VAEDecode)
    Each node calls ``load_models_gpu`` for its part before computing, so ComfyUI moves it to the compute
    device, evicts or offloads other models to make room, and gives the memory back when something else
    needs it. The patchers are of the class ComfyUI builds its own models with (``CoreModelPatcher``:
    ``ModelPatcherDynamic`` under dynamic VRAM, which streams the ``operations`` layers' weights at each
    forward and moves every other weight whole; plain ``ModelPatcher`` on older hosts and on the CPU), so
    our parts share one memory policy with core models. On the legacy patcher a part that does not fit
    is loaded partially (low VRAM): every weight of every part sits in a leaf module that casts it to
    the compute device at use (``operations`` layers, and sa3_core.ops for norms, embeddings, learned
    tensors and the text encoder), so the modules left on the offload device still compute, LoRA patches
    included (tests/e2e/test_lowvram_host.py runs the workflows under a small emulated VRAM budget).

LoRA (non-destructive, ComfyUI's own mechanism)
    LoRAApply returns a new SA3Model whose ``dit`` and ``text`` patchers are clones of the *unpatched*
    loader patchers with one weight patch per weight ``sa3_core.lora.plan_lora_stack`` adapts. The patch computes
    ``sa3_core.lora_adapter.effective_weight(base, adapters of the whole stack, strengths)`` when ComfyUI loads
    the clone (and ComfyUI restores the base weights when another clone, or the plain model, is loaded;
    under dynamic VRAM it applies the patch to each streamed weight instead),
    so the weights equal ``StableAudioModel.load_lora`` + ``set_lora_strength`` bit for bit, other
    branches of the graph never see the LoRA, and changing a LoRA never reloads the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import torch
from comfy.weight_adapter import WeightAdapterBase
from torch import nn

from ..sa3_core.checkpoint import load_components
from ..sa3_core.lora import PlannedAdapter, adaptable_weights, plan_lora_stack, validate_strength
from ..sa3_core.lora_adapter import Adapter, effective_weight
from ..sa3_core.lora_file import LoRAFile, read_lora_file
from ..sa3_core.pipeline import StableAudioModel
from ..sa3_core.precision import component_dtypes

PARTS = ("text", "dit", "vae")

# Where each LoRA target's module sits inside the patchers' parts (see SA3Part below): (part, module name).
_LORA_TARGET_PART = {"dit": ("dit", "dit"), "conditioner": ("text", "conditioners")}

LORA_TARGETS = {
    "dit and conditioner": ("dit", "conditioner"),
    "dit": ("dit",),
    "conditioner": ("conditioner",),
}

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Weight storage of the DiT's and the text encoder's matrices; float8 is cast to the compute dtype at use by
# ComfyUI's manual-cast layers (sa3_core.ops for the text encoder's transformers layers).
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


class SA3Part(nn.Module):
    """The nn.Module a ModelPatcher manages: names the stage's modules so weight keys are stable
    (``dit.<path>.weight``, ``conditioners.<path>.weight``, ...). One subclass per part, so ComfyUI's log
    says which part it loads ("Requested to load SA3DiTPart")."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class SA3TextPart(SA3Part):
    """T5Gemma encoder + SA3 conditioners."""


class SA3DiTPart(SA3Part):
    """The diffusion transformer."""


class SA3VAEPart(SA3Part):
    """The SAME autoencoder."""


def _host_patcher_class() -> type[comfy.model_patcher.ModelPatcher]:
    """The ModelPatcher class the host builds its own models with. Hosts with dynamic VRAM set
    ``comfy.model_patcher.CoreModelPatcher`` to ``ModelPatcherDynamic`` at startup (which itself falls back
    to ``ModelPatcher`` for a CPU load device); older hosts (0.3.75) have only ``ModelPatcher``."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


class _StackPatch(WeightAdapterBase):
    """A ComfyUI weight patch: the SA3 LoRA stack's effective weight for one parameter.

    Built the way ComfyUI builds its own adapters, ``type(patch)(loaded_keys, weights)``: the dynamic-VRAM
    and low-VRAM paths of newer ComfyUI (``comfy.lora.prefetch_prepared_value``) rebuild every adapter that
    way with each tensor of ``weights`` copied to a staging buffer on the compute device, keeping the
    structure and every non-tensor value. So ``weights`` holds everything, as plain tuples::

        (dtype, ((adapter_type, rank, scaling, strength, ((tensor_name, tensor), ...)), ...))

    one entry per LoRA of the stack that adapts this weight, in chain order. ComfyUI calls
    ``calculate_weight`` with a working copy of the base weight (float32 on the legacy path, the compute
    dtype at each forward under dynamic VRAM); we compute in the parameter's own dtype, as ``LoRAStack``
    does, so the result is the same bits the Python API produces.
    """

    name = "sa3_lora_stack"

    def __init__(self, loaded_keys: set[str], weights: tuple):
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def of_stack(cls, planned: list[PlannedAdapter], dtype: torch.dtype) -> _StackPatch:
        """The patch for one weight of ``sa3_core.lora.plan_lora_stack``; the LoRA names are for the message
        when the merged weight is not finite."""
        layers = tuple(
            (
                p.adapter.adapter_type,
                p.adapter.rank,
                p.adapter.scaling,
                float(p.strength),
                tuple(p.adapter.tensors().items()),
            )
            for p in planned
        )
        return cls(set(), (dtype, layers, tuple(p.lora_name for p in planned)))

    def calculate_shape(self, key: str) -> None:
        return None  # a LoRA stack never changes a weight's shape

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        dtype, layers, loras = self.weights
        adapters = [
            Adapter(adapter_type, rank, scaling, **dict(tensors)) for adapter_type, rank, scaling, _, tensors in layers
        ]
        strengths = [layer[3] for layer in layers]
        return effective_weight(
            weight.to(dtype), adapters, strengths, dora_mode="linear", name=f"{key} (LoRA {', '.join(loras)})"
        ).to(weight.dtype)


@dataclass
class SA3Model:
    """What an SA3_MODEL wire carries: the stage API, its patchers and the LoRA chain applied to them."""

    core: StableAudioModel
    name: str
    parts: dict[str, comfy.model_patcher.ModelPatcher]
    base_parts: dict[str, comfy.model_patcher.ModelPatcher]  # the loader's, never patched
    # The LoRA chain: each file with its strength per LoRA target (sa3_core.lora.plan_lora_stack's input).
    loras: tuple[tuple[LoRAFile, dict[str, float]], ...] = field(default_factory=tuple)

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: Path, *, text_encoder: Path | None, dtype: str, attention: str, base: bool, weights: str = "default"
    ) -> SA3Model:
        load_device = mm.get_torch_device()
        dtypes = component_dtypes(load_device, DTYPES[dtype])  # for the compute device, not the offload one
        weights_dtype = dtypes.dit
        weight_storage = WEIGHT_DTYPES[weights]
        components = load_components(
            path,
            device=mm.unet_offload_device(),
            dtype=weights_dtype,
            autoencoder_dtype=dtypes.autoencoder,
            weight_dtype=weight_storage,
            text_encoder_path=text_encoder,
            operations=comfy.ops.disable_weight_init if weight_storage is None else comfy.ops.manual_cast,
            attention_backend=attention,
            base=base,
        )
        core = StableAudioModel(components, device=load_device, dtype=weights_dtype)
        text_modules = {"conditioners": core.conditioners}
        if core.text_encoder is not None:
            text_modules["text_encoder"] = core.text_encoder.model
        patcher = _host_patcher_class()
        parts = {
            "text": patcher(
                SA3TextPart(**text_modules), load_device=load_device, offload_device=mm.text_encoder_offload_device()
            ),
            "dit": patcher(SA3DiTPart(dit=core.dit), load_device=load_device, offload_device=mm.unet_offload_device()),
            "vae": patcher(
                SA3VAEPart(autoencoder=core.autoencoder),
                load_device=load_device,
                offload_device=mm.vae_offload_device(),
            ),
        }
        return cls(core=core, name=path.name, parts=parts, base_parts=dict(parts))

    def load_parts(self, *names: str, memory_required: int = 0) -> None:
        """Have ComfyUI put these parts (with this model's LoRA patches) on the compute device."""
        patchers = [self.parts[n] for n in names]
        try:
            mm.load_models_gpu(patchers, memory_required=memory_required)  # partially where VRAM is short
        except Exception:
            # A weight patch that fails (a LoRA whose merged weight is not finite) stops ComfyUI half-way through
            # patching the shared weights; put back the ones already patched, so the plain model stays intact.
            for patcher in patchers:
                patcher.unpatch_model(patcher.offload_device)
            raise

    def get_models(self) -> list[comfy.model_patcher.ModelPatcher]:
        """The patchers this wire uses. Newer ComfyUI asks every node output for them (``get_models``) and
        marks dynamic-VRAM models in use by the running prompt, so their pinned memory is evicted last."""
        return list(self.parts.values())

    # -- LoRA ---------------------------------------------------------------------------------------

    def with_lora(self, path: Path, strength: float, targets: tuple[str, ...]) -> SA3Model:
        """A new SA3Model with one more LoRA on the stack; this one (and its weights) is unchanged.
        ``targets``: the LoRA targets ("dit", "conditioner") ``strength`` applies to; the others get 0."""
        file, strength = read_lora_file(path), validate_strength(strength)
        lora = (file, {t: strength if t in targets else 0.0 for t in _LORA_TARGET_PART})
        loras = self.loras + (lora,)
        modules = {
            target: self.base_parts[part].model.get_submodule(module)
            for target, (part, module) in _LORA_TARGET_PART.items()
        }
        weights = {target: adaptable_weights(module) for target, module in modules.items()}
        patches: dict[str, dict[str, _StackPatch]] = {part: {} for part, _ in _LORA_TARGET_PART.values()}
        for (target, path_in_target), planned in plan_lora_stack(loras, weights).items():
            part, module = _LORA_TARGET_PART[target]
            dtype = weights[target][path_in_target].dtype
            patches[part][f"{module}.{path_in_target}.weight"] = _StackPatch.of_stack(planned, dtype)
        parts = dict(self.base_parts)
        for part, part_patches in patches.items():
            if part_patches:
                parts[part] = self.base_parts[part].clone()
                parts[part].add_patches(part_patches)
        return SA3Model(core=self.core, name=self.name, parts=parts, base_parts=self.base_parts, loras=loras)
