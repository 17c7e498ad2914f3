"""SA3_TextEncode: prompts + durations -> SA3_CONDITIONING (the T5Gemma encoder and seconds conditioner)."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from ..sa3_core.validation import MAX_PROMPT_CHARS, validate_batch_size, validate_durations, validate_prompts
from . import parsing
from .common import CATEGORY, MODEL_TOOLTIP, SA3ConditioningType, SA3ModelType, to_device
from .parsing import ITEM_SEPARATOR

MAX_SECONDS = 384.0  # the seconds conditioner's range; each model's own limit (120 s for SA3) is checked on use


class SA3TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_TextEncode",
            display_name="Stable Audio 3 Text Encode",
            category=f"{CATEGORY}/conditioning",
            description=(
                "Encodes the prompt (and optional negative prompt) with T5Gemma and the requested duration with "
                f"the seconds conditioner. For a batch with a different prompt per item, separate the prompts "
                f"with a line holding only {ITEM_SEPARATOR}: each item becomes one batch item."
            ),
            inputs=[
                SA3ModelType.Input("model", tooltip=MODEL_TOOLTIP),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    tooltip=(
                        "What to generate, e.g. 'warm analog synth pads, 90 BPM'. Several prompts separated by a line "
                        f"'{ITEM_SEPARATOR}' make a batch with one prompt per item (connect this conditioning to the "
                        "Empty Latent so the batch follows it)."
                    ),
                ),
                io.String.Input(
                    "negative_prompt",
                    multiline=True,
                    default="",
                    tooltip=(
                        "What to avoid. Only used when the sampler's cfg is above 1. Empty: no negative prompt (the "
                        f"official default). One text for every item, or one per item separated by '{ITEM_SEPARATOR}'."
                    ),
                ),
                io.Float.Input(
                    "duration",
                    default=10.0,
                    min=0.1,
                    max=MAX_SECONDS,
                    step=0.1,
                    tooltip=(
                        "Seconds of audio to generate (the model is told this length); at most 120 s for the SA3 "
                        "models. Connect this conditioning to the Empty Latent's conditioning input so the duration is "
                        "set here only."
                    ),
                ),
                io.String.Input(
                    "per_item_durations",
                    default="",
                    optional=True,
                    tooltip=(
                        "Optional: one duration per prompt, e.g. '3, 2, 1.5' (overrides duration). Connect this "
                        "conditioning to the Empty Latent's conditioning input to make a latent of these durations."
                    ),
                ),
            ],
            outputs=[
                SA3ConditioningType.Output(
                    display_name="conditioning", tooltip=("Prompt and duration conditioning, one entry per batch item.")
                )
            ],
        )

    @staticmethod
    def read_texts(
        prompt: str, negative_prompt: str, duration: float, per_item_durations: str
    ) -> tuple[list[str], list[str] | None, list[float]]:
        """The widgets' prompts, negative prompts and durations, checked (lengths first, then syntax, batch
        size and text) before anything is encoded."""
        prompts, negatives = parsing.per_item_prompts(prompt, negative_prompt, max_chars=MAX_PROMPT_CHARS)
        validate_batch_size(len(prompts), f"prompt (items separated by '{ITEM_SEPARATOR}')")
        validate_prompts(prompts, "prompt")
        validate_prompts(negatives or (), "negative_prompt")
        return prompts, negatives, parsing.item_durations(duration, per_item_durations, len(prompts))

    @classmethod
    def validate_inputs(
        cls, prompt: str | None = None, negative_prompt: str | None = None, per_item_durations: str | None = None
    ) -> bool | str:
        """The same checks at queue time, so a bad text is refused before the prompt is queued (fast: every
        parser reads its text once, after checking its length). Linked inputs arrive as None."""
        if prompt is None or negative_prompt is None:
            return True
        try:  # the duration widget is a number ComfyUI checks itself; 1.0 stands in for it
            cls.read_texts(prompt, negative_prompt, 1.0, per_item_durations or "")
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls, model, prompt: str, negative_prompt: str = "", duration: float = 10.0, per_item_durations: str = ""
    ) -> io.NodeOutput:
        prompts, negatives, durations = cls.read_texts(prompt, negative_prompt, duration, per_item_durations)
        core = model.core
        # Checked here so a wrong duration shows on this node, not later on the sampler.
        validate_durations(durations, core.max_seconds)
        model.load_parts("text")
        conditioning = core.encode_prompts(prompts, durations, negatives)
        return io.NodeOutput(to_device(conditioning, mm.intermediate_device()))
