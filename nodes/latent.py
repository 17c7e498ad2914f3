"""Latent nodes: the window to generate in, audio-to-audio init, inpaint/continuation masks."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..sa3_core.inpaint import continuation_region, regions_per_item
from ..sa3_core.validation import MAX_BATCH, validate_batch_size, validate_init_noise_level, validate_regions
from .common import (
    CATEGORY,
    MODEL_TOOLTIP,
    SA3ConditioningType,
    SA3LatentInfo,
    SA3ModelType,
    audio_input,
    make_latent,
    sa3_info,
    vae_memory,
)
from .conditioning import MAX_SECONDS
from .parsing import choose, parse_regions

INPAINT_MODES = ("regions", "continuation")


class SA3EmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_EmptyLatent",
            display_name="Stable Audio 3 Empty Latent",
            category=f"{CATEGORY}/latent",
            description=(
                "The latent window to generate: the longest duration plus 6 s of headroom (as the official "
                "generate), rounded to the model's latent grid. Each item's audio is trimmed back to its duration "
                "when decoded."
            ),
            inputs=[
                SA3ModelType.Input("model", tooltip=MODEL_TOOLTIP),
                io.Float.Input(
                    "duration",
                    default=10.0,
                    min=0.1,
                    max=MAX_SECONDS,
                    step=0.1,
                    tooltip=(
                        "Seconds of audio per item, used only when no conditioning is connected (then it must match "
                        "the Text Encode duration; at most 120 s for SA3)."
                    ),
                ),
                io.Int.Input(
                    "batch_size",
                    default=1,
                    min=1,
                    max=MAX_BATCH,
                    tooltip=(
                        "How many clips to generate at once (each from its own noise); used only when no "
                        "conditioning is connected."
                    ),
                ),
                SA3ConditioningType.Input(
                    "conditioning",
                    optional=True,
                    tooltip=(
                        "Connect the Text Encode output here: the batch size and each item's duration then come from "
                        "the conditioning (one item per prompt, per-item durations) and the duration and batch_size "
                        "widgets are ignored, so durations are set in one place."
                    ),
                ),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="latent",
                    tooltip=("The window to generate in (empty; the sampler draws the noise from its seed)."),
                )
            ],
        )

    @classmethod
    def execute(cls, model, duration: float, batch_size: int = 1, conditioning=None) -> io.NodeOutput:
        if conditioning is not None:
            durations = list(conditioning.durations)
        else:
            durations = [float(duration)] * validate_batch_size(batch_size)
        window = model.core.plan_window(durations)
        samples = torch.zeros(window.batch_size, model.core.autoencoder.latent_dim, window.latents)
        return io.NodeOutput(make_latent(samples, SA3LatentInfo(window=window)))


class SA3InitAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_InitAudioEncode",
            display_name="Stable Audio 3 Init Audio (audio-to-audio)",
            category=f"{CATEGORY}/latent",
            description=(
                "Audio-to-audio: encodes an audio clip with the SAME autoencoder (resampled to 44.1 kHz, mono "
                "made stereo, cut or padded to the window) as the starting point of sampling."
            ),
            inputs=[
                SA3ModelType.Input("model", tooltip=MODEL_TOOLTIP),
                io.Latent.Input("latent", tooltip="The window to generate in (from Empty Latent)."),
                io.Audio.Input("audio", tooltip="The clip to transform (a single clip, any sample rate)."),
                io.Float.Input(
                    "noise_level",
                    default=0.9,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "How much to change the input: the sampler starts at this noise level. Lower keeps more of the "
                        "input; 1.0 ignores it. 0.9 is the official demo's default."
                    ),
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The latent with the init audio attached.")],
        )

    @classmethod
    def execute(cls, model, latent, audio, noise_level: float = 0.9) -> io.NodeOutput:
        info = sa3_info(latent, "Init Audio")
        validate_init_noise_level(noise_level)
        clip = audio_input(audio, "Init Audio", "audio")
        window = info.window
        model.load_parts("vae", memory_required=vae_memory(window.audio_samples, 1))
        latents = model.core.encode_audio(clip, window, name="init_audio")
        samples = latents.expand(window.batch_size, -1, -1).float().contiguous()
        return io.NodeOutput(
            make_latent(
                samples,
                SA3LatentInfo(window=window, init_noise_level=float(noise_level), local_add_cond=info.local_add_cond),
            )
        )


class SA3InpaintMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_InpaintMask",
            display_name="Stable Audio 3 Inpaint / Continue",
            category=f"{CATEGORY}/latent",
            description=(
                "Inpainting: keeps the source audio and regenerates the given time regions. Continuation: keeps "
                "the whole source clip and generates what follows, up to the latent's duration."
            ),
            inputs=[
                SA3ModelType.Input("model", tooltip=MODEL_TOOLTIP),
                io.Latent.Input("latent", tooltip="The window to generate in (from Empty Latent or Init Audio)."),
                io.Audio.Input("audio", tooltip="The source clip whose audio is kept outside the regions."),
                io.Combo.Input(
                    "mode",
                    options=list(INPAINT_MODES),
                    default="regions",
                    tooltip=(
                        "regions: regenerate the regions below. continuation: regenerate everything after the end of "
                        "the source clip (the regions are ignored)."
                    ),
                ),
                io.String.Input(
                    "regions",
                    default="2.0-4.0",
                    tooltip=(
                        "Seconds to regenerate, start-end, several separated by commas: e.g. '0.5-1.0, 2.5-3.5'. "
                        "Each start must be before its end and before the output's duration."
                    ),
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The latent with the inpaint mask attached.")],
        )

    @classmethod
    def validate_inputs(cls, regions: str | None = None) -> bool | str:
        if regions is None:
            return True
        try:  # the duration is not known at queue time: the regions alone
            validate_regions(parse_regions(regions), None)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, model, latent, audio, mode: str = "regions", regions: str = "2.0-4.0") -> io.NodeOutput:
        info = sa3_info(latent, "Inpaint")
        choose("mode", mode, INPAINT_MODES)
        window = info.window
        sample_rate, samples = audio_input(audio, "Inpaint", "audio")
        if mode == "continuation":
            source_seconds = samples.shape[-1] / sample_rate
            requested = [[continuation_region(source_seconds, d)] for d in window.durations]
        else:
            requested = parse_regions(regions)  # shared by every item
        item_regions = regions_per_item(requested, window.durations)  # checked before the (slow) encode
        model.load_parts("vae", memory_required=vae_memory(window.audio_samples, 1))
        source = model.core.encode_inpaint_source((sample_rate, samples), window)
        local = model.core.inpaint_condition(window, source, regions=item_regions)
        return io.NodeOutput(
            make_latent(
                latent["samples"],
                SA3LatentInfo(
                    window=window,
                    init_noise_level=info.init_noise_level,
                    local_add_cond=local.float().to(mm.intermediate_device()),
                ),
            )
        )
