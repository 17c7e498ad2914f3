"""The official implementation's golden cases: reading one and measuring how far ``generate`` is from it.

Both sets (``../shared/fixtures/cases`` and ``../shared/fixtures/strict/cases``) share one format (their
READMEs): ``NAME.json`` names the model folder, the official ``generate`` keyword arguments, audio inputs,
LoRA files and ``set_lora_strength`` calls; ``NAME.safetensors`` holds ``output`` (what ``generate`` returned),
``latents`` for audio cases and the ``input.*`` tensors. Model folders and LoRA paths are relative to the
set's folder (the parent of ``cases/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sa3_core.pipeline import StableAudioModel
from tests.helpers import relative_l2

TOLERANCE = 1e-4  # relative L2, latents and audio (the contract: both fixture sets' READMEs)


def case_names(set_dir: Path) -> list[str]:
    return sorted(p.stem for p in (set_dir / "cases").glob("*.json"))


@dataclass
class CaseErrors:
    """Relative L2 errors of one case: ``latents`` and ``audio`` (None when the case has no such output);
    ``audio`` is the worst of the untrimmed output and every trimmed per-item tensor."""

    latents: float | None = None
    audio: float | None = None
    notes: list[str] = field(default_factory=list)

    def worst(self) -> float:
        return max(e for e in (self.latents, self.audio) if e is not None)


def _worst(current: float | None, error: float) -> float:
    return error if current is None else max(current, error)


def run_case(model: StableAudioModel, set_dir: Path, name: str) -> CaseErrors:
    """Reproduce one golden case with ``model`` (loaded from the case's folder) and measure it.

    Loads the case's LoRAs with ``dora_mode="official"`` (the fixtures were made by the official DoRA response)
    and unloads them afterwards. Shape and output-type mismatches fail here (assert) rather than as an error.
    """
    spec = json.loads((set_dir / "cases" / f"{name}.json").read_text())
    reference = load_file(set_dir / "cases" / f"{name}.safetensors")
    kwargs: dict[str, Any] = dict(spec["generate_kwargs"])
    for key, audio in spec.get("audio_inputs", {}).items():
        kwargs[key] = (audio["sample_rate"], reference[audio["tensor"]])
    errors = CaseErrors()
    if spec.get("loras"):
        model.load_lora([set_dir / p for p in spec["loras"]], dora_mode="official")
    try:
        for call in spec.get("set_lora_strength_calls", []):
            model.set_lora_strength(call["strength"], lora_index=call["lora_index"])

        if spec["output_kind"] == "latents":
            # (lora_base_reference of the first set stores its latents under "latents" only)
            expected = reference["output"] if "output" in reference else reference["latents"]
            errors.latents = relative_l2(model.generate(**kwargs), expected)
            return errors

        durations = kwargs.get("duration")
        if isinstance(durations, list) and len(set(durations)) > 1:
            # The official code returns the untrimmed window here; we return one trimmed tensor per item.
            untrimmed = model.generate(**kwargs, truncate_output_to_duration=False)
            errors.audio = relative_l2(untrimmed, reference["output"])
            items = model.generate(**kwargs)
            assert isinstance(items, list) and len(items) == len(durations)
            for item, seconds, full in zip(items, durations, reference["output"]):
                samples = int(seconds * model.sample_rate)
                assert item.shape == (2, samples), f"item of shape {tuple(item.shape)} for {seconds} s"
                errors.audio = _worst(errors.audio, relative_l2(item, full[:, :samples]))
            errors.notes.append("untrimmed + per item")
        else:
            audio = model.generate(**kwargs)
            assert list(audio.shape) == spec["output_shape"]
            errors.audio = relative_l2(audio, reference["output"])
        errors.latents = relative_l2(model.generate(**{**kwargs, "return_latents": True}), reference["latents"])
        return errors
    finally:
        model.unload_lora()


class ModelCache:
    """One loaded model per folder of a set (LoRA cases unload after themselves)."""

    def __init__(self, set_dir: Path):
        self.set_dir = set_dir
        self._models: dict[str, StableAudioModel] = {}

    def __call__(self, folder: str) -> StableAudioModel:
        if folder not in self._models:
            # float32 explicitly: the fixtures are the official CPU (fp32) results, and on a CPU with fast bf16
            # our default would be bf16 (sa3_core.precision).
            self._models[folder] = StableAudioModel.from_pretrained(
                self.set_dir / folder, device="cpu", dtype=torch.float32
            )
        return self._models[folder]

    def for_case(self, name: str) -> StableAudioModel:
        spec = json.loads((self.set_dir / "cases" / f"{name}.json").read_text())
        return self(spec["model"])
