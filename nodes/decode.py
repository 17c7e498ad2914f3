"""SA3_VAEDecode: latents -> ComfyUI AUDIO, trimmed to each item's duration."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from ..sa3_core.output import PEAK_POLICIES, trim_padded
from .common import CATEGORY, MODEL_TOOLTIP, SA3ModelType, chunk_progress, sa3_info, vae_memory
from .parsing import choose

CHUNKED = {"auto": None, "chunked": True, "full": False}


class SA3VAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_VAEDecode",
            display_name="Stable Audio 3 VAE Decode",
            category=f"{CATEGORY}/latent",
            description=(
                "Decodes latents with the SAME autoencoder to 44.1 kHz stereo AUDIO for the core Save Audio and "
                "Preview Audio nodes, trimmed to the requested duration."
            ),
            inputs=[
                SA3ModelType.Input("model", tooltip=MODEL_TOOLTIP),
                io.Latent.Input("latent", tooltip="From the Stable Audio 3 Sampler."),
                io.Combo.Input(
                    "chunked",
                    options=list(CHUNKED),
                    default="auto",
                    tooltip=(
                        "auto: as the model config says (chunked for SA3: exact, bounded memory for long audio). "
                        "chunked / full force one or the other."
                    ),
                ),
                io.Combo.Input(
                    "peak",
                    options=list(PEAK_POLICIES),
                    default="clamp",
                    tooltip=(
                        "clamp: clip to [-1, 1] (official output). limit: scale an item down only if it would clip. "
                        "none: leave the samples as decoded."
                    ),
                ),
            ],
            outputs=[
                io.Audio.Output(
                    display_name="audio",
                    tooltip=(
                        "Stereo 44.1 kHz audio, (batch, 2, samples). Every item is trimmed to its duration; "
                        "when the items of a batch have different durations, the shorter ones are padded with "
                        "silence to the longest (one tensor holds the whole batch)."
                    ),
                )
            ],
        )

    @classmethod
    def execute(cls, model, latent, chunked: str = "auto", peak: str = "clamp") -> io.NodeOutput:
        info = sa3_info(latent, "VAE Decode")
        choose("chunked", chunked, list(CHUNKED))
        choose("peak", peak, PEAK_POLICIES)
        window = info.window
        core = model.core
        model.load_parts("vae", memory_required=vae_memory(window.audio_samples, window.batch_size))
        audio = core.decode_latents(
            latent["samples"].to(core.device), window, chunked=CHUNKED[chunked], peak=peak, progress=chunk_progress()
        )
        waveform, _ = trim_padded(audio, window.durations, core.sample_rate)  # silence after a shorter item's end
        waveform = waveform.float().to(mm.intermediate_device()).contiguous()
        return io.NodeOutput({"waveform": waveform, "sample_rate": core.sample_rate})
