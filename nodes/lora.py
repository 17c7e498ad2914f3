"""SA3_LoRAApply: one SA3 LoRA file on an SA3_MODEL; chain several to stack them."""

from __future__ import annotations

from comfy_api.latest import io

from . import files
from .common import CATEGORY, SA3ModelType
from .model import LORA_TARGETS
from .parsing import choose


class SA3LoRAApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_LoRAApply",
            display_name="Stable Audio 3 Apply LoRA",
            category=f"{CATEGORY}/lora",
            description=(
                "Applies an official SA3 LoRA file (LoRA, DoRA, BoRA and their -XS forms) to the model. Chain "
                "several to stack them: they apply in chain order. The loaded model is not changed: other branches "
                "of the graph keep the plain model, and changing a LoRA or its strength never reloads the checkpoint."
            ),
            inputs=[
                SA3ModelType.Input(
                    "model",
                    tooltip="The model to add this LoRA to (the loader, or the previous Apply LoRA to stack them).",
                ),
                io.Combo.Input(
                    "lora_name",
                    options=files.list_loras() or [files.NO_LORA],
                    tooltip=("An SA3 LoRA .safetensors file from models/loras."),
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.05,
                    tooltip=(
                        "1 = as trained, 0 = off, above 1 amplifies, negative subtracts. DoRA/BoRA strengths move "
                        "linearly from the plain model (0) to the trained weights (1)."
                    ),
                ),
                io.Combo.Input(
                    "target",
                    options=list(LORA_TARGETS),
                    default="dit and conditioner",
                    tooltip=(
                        "Which parts the strength applies to: the diffusion transformer (sound and style), the "
                        "conditioner (how prompts and durations are read), or both (as trained); the other part gets 0."
                    ),
                ),
            ],
            outputs=[SA3ModelType.Output(display_name="model", tooltip="The model with this LoRA added to its stack.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        if lora_name is None:
            return True
        try:
            files.resolve_lora(lora_name)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls, model, lora_name: str, strength: float = 1.0, target: str = "dit and conditioner"
    ) -> io.NodeOutput:
        choose("target", target, list(LORA_TARGETS))
        with files.relative_paths_in_errors():
            path = files.resolve_lora(lora_name)
            return io.NodeOutput(model.with_lora(path, strength, LORA_TARGETS[target]))
