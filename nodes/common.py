"""Wire types and small helpers shared by the nodes.

Wire types
    SA3_MODEL         nodes.model.SA3Model (stage API + ModelPatchers + LoRA chain)
    SA3_CONDITIONING  sa3_core.pipeline.PromptConditioning (prompts, negatives, durations, encoded tensors)
    LATENT            {"samples": (B, 256, L) float32, "sa3": SA3LatentInfo}
    AUDIO             ComfyUI's {"waveform": (B, C, T) float32, "sample_rate": int}
Tensors between nodes live on ComfyUI's intermediate device (the CPU unless --gpu-only); each node
moves what it needs to the model's device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..sa3_core.pipeline import PromptConditioning
from ..sa3_core.validation import validate_sample_rate
from ..sa3_core.window import Window

CATEGORY = "StableAudio3"
MODEL_TOOLTIP = "The Stable Audio 3 model: from the Model Loader, or from Apply LoRA to use a LoRA stack."

SA3ModelType = io.Custom("SA3_MODEL")
SA3ConditioningType = io.Custom("SA3_CONDITIONING")


@dataclass(frozen=True)
class SA3LatentInfo:
    """What an SA3 LATENT carries besides its samples.

    ``window``: the latent window (durations, length); ``init_noise_level``: set by InitAudioEncode, then
    ``samples`` are the init-audio latents the sampler starts from (None: start from pure noise);
    ``local_add_cond``: the (B, 257, L) inpaint input built by InpaintMask (None: plain generation).
    """

    window: Window
    init_noise_level: float | None = None
    local_add_cond: torch.Tensor | None = None


def sa3_info(latent: dict[str, Any], node: str) -> SA3LatentInfo:
    info = latent.get("sa3") if isinstance(latent, dict) else None
    if not isinstance(info, SA3LatentInfo):
        raise ValueError(
            f"{node}: this LATENT was not made by a Stable Audio 3 node; start from 'Stable Audio 3 Empty Latent'"
        )
    return info


def make_latent(samples: torch.Tensor, info: SA3LatentInfo) -> dict[str, Any]:
    return {"samples": samples.to(mm.intermediate_device()), "sa3": info}


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor of a (nested) stage-result dataclass, e.g. a PromptConditioning."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            current = getattr(value, f.name)
            if f.init and (isinstance(current, torch.Tensor) or dataclasses.is_dataclass(current)):
                changes[f.name] = _map_tensors(current, fn)
        return dataclasses.replace(value, **changes)
    return value


def to_device(value: Any, device: torch.device) -> Any:
    """Move the tensors of a stage result (e.g. a PromptConditioning) to ``device``."""
    return _map_tensors(value, lambda t: t.to(device))


def repeat_conditioning(cond: PromptConditioning, batch: int) -> PromptConditioning:
    """One prompt's conditioning for a batch of ``batch`` items with the same duration (a prompt's encoding
    does not depend on the rest of the batch, so this equals encoding it ``batch`` times)."""
    repeated = _map_tensors(cond, lambda t: t.expand(batch, *t.shape[1:]).clone())
    return dataclasses.replace(repeated, durations=cond.durations * batch)


def audio_input(audio: dict[str, Any], node: str, name: str) -> tuple[int, torch.Tensor]:
    """ComfyUI AUDIO -> the ``(sample_rate, (C, T))`` pair the stage API takes (one clip)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{node}: {name} is not an AUDIO value (expected waveform and sample_rate)")
    waveform = audio["waveform"]
    if waveform.ndim != 3:
        raise ValueError(f"{node}: {name} waveform must be (batch, channels, samples), got {tuple(waveform.shape)}")
    if waveform.shape[0] != 1:
        raise ValueError(f"{node}: {name} holds {waveform.shape[0]} clips; connect a single clip (batch of 1)")
    # Checked here too (sa3_core checks it again), so a broken header fails before the autoencoder is loaded.
    return validate_sample_rate(audio["sample_rate"], f"{node}: {name}"), waveform[0].float()


def vae_memory(samples: int, batch: int) -> int:
    """A rough activation budget for a SAME encode/decode of ``batch`` x ``samples`` (bytes), passed to
    ``load_models_gpu`` so ComfyUI frees room first (chunked decoding keeps the real use well below it)."""
    return batch * samples * 4 * 64


def step_callback(total: int) -> Callable[[int, int, torch.Tensor, torch.Tensor], None]:
    """The sampler's per-step callback: ComfyUI's progress bar, and a stop on 'Cancel' (interrupt)."""
    bar = comfy.utils.ProgressBar(total)

    def callback(step: int, steps: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(step + 1, steps)

    return callback


def chunk_progress() -> Callable[[int, int], None]:
    """Progress for chunked encode/decode loops (and a stop on interrupt between chunks)."""
    bar = comfy.utils.ProgressBar(1)

    def progress(done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    return progress
