"""SA3_ModelLoader: a checkpoint from models/stable_audio_3 -> SA3_MODEL."""

from __future__ import annotations

from comfy_api.latest import io

from ..sa3_core.attention import BACKENDS
from . import files
from .common import CATEGORY, SA3ModelType
from .model import DTYPES, WEIGHT_DTYPES, SA3Model
from .parsing import choose


def _base_from_name(name: str) -> bool:
    """A single file cannot say whether it is a -base model; the Comfy-Org names do (``..._base``)."""
    stem = name.rsplit("/", 1)[-1].lower().removesuffix(".safetensors")
    return stem.endswith("_base") or stem.endswith("-base")


class SA3ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        models = files.list_models() or [files.NO_MODEL]
        encoders = [files.AUTO_TEXT_ENCODER] + files.list_text_encoders()
        return io.Schema(
            node_id="SA3_ModelLoader",
            display_name="Stable Audio 3 Model Loader",
            category=f"{CATEGORY}/loaders",
            description=(
                "Loads a Stable Audio 3 model (DiT, SAME autoencoder, conditioners and the T5Gemma text encoder). "
                "ComfyUI's model management moves each part to the GPU when a node needs it and offloads it when "
                "memory is needed elsewhere; changing only the prompt never reloads the model."
            ),
            inputs=[
                io.Combo.Input(
                    "model",
                    options=models,
                    tooltip=(
                        "From models/stable_audio_3: an official model folder (model_config.json, model.safetensors, "
                        "t5gemma-b-b-ul2/, as downloaded from stabilityai/stable-audio-3-*) or a Comfy-Org single file "
                        "(stable_audio_3_*.safetensors, also listed from models/checkpoints; a name ending in _base "
                        "selects the base-model settings). "
                        "Empty? Put a model there and press R to refresh."
                    ),
                ),
                io.Combo.Input(
                    "text_encoder",
                    options=encoders,
                    default=files.AUTO_TEXT_ENCODER,
                    tooltip=(
                        "T5Gemma prompt encoder. auto: an official folder uses its own t5gemma-b-b-ul2/; a single file "
                        "uses the t5gemma_b_b_ul2.safetensors from models/text_encoders."
                    ),
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="auto",
                    tooltip=(
                        "Weight and compute precision. auto: float16 on CUDA (as the official code), float32 on Apple "
                        "MPS, and on CPU bfloat16 where this CPU multiplies it much faster than float32 "
                        "(measured once), else float32. On MPS the audio decoder never runs in bfloat16 (it decodes "
                        "to noise there); it uses float32 instead."
                    ),
                ),
                io.Combo.Input(
                    "attention",
                    options=list(BACKENDS),
                    default="auto",
                    tooltip=(
                        "Attention implementation. auto: flash-attn on CUDA when installed, else exact band attention "
                        "for windowed layers and PyTorch SDPA elsewhere. Results differ slightly between backends."
                    ),
                ),
                io.Combo.Input(
                    "weights",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    optional=True,
                    tooltip=(
                        "Weight storage of the diffusion transformer and the text encoder. fp8_e4m3fn / fp8_e5m2 keep "
                        "their weight matrices in 8 bits (about half the memory of float16, a quarter of float32) and "
                        "compute in the dtype above; results differ slightly. LoRAs need the default storage."
                    ),
                ),
            ],
            outputs=[SA3ModelType.Output(display_name="model", tooltip="The loaded Stable Audio 3 model.")],
        )

    @classmethod
    def validate_inputs(cls, model: str | None = None) -> bool | str:
        if model is None:
            return True
        try:
            files.resolve_model(model)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, model: str, **kwargs) -> str:
        try:
            return files.fingerprint(files.resolve_model(model))
        except ValueError:
            return "missing"

    @classmethod
    def execute(
        cls,
        model: str,
        text_encoder: str = files.AUTO_TEXT_ENCODER,
        dtype: str = "auto",
        attention: str = "auto",
        weights: str = "default",
    ) -> io.NodeOutput:
        choose("dtype", dtype, list(DTYPES))
        choose("attention", attention, BACKENDS)
        choose("weights", weights, list(WEIGHT_DTYPES))
        with files.relative_paths_in_errors():
            path = files.resolve_model(model)
            encoder = files.resolve_text_encoder(text_encoder, path)
            loaded = SA3Model.load(
                path,
                text_encoder=encoder,
                dtype=dtype,
                attention=attention,
                base=path.is_file() and _base_from_name(model),
                weights=weights,
            )
        return io.NodeOutput(loaded)
