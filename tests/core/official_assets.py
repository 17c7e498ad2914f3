"""What a user of the official package has on disk, for the tests that play its scenarios: a Hugging Face
Hub cache laid out exactly as the hub lays it out (``models--<org>--<name>/blobs``, ``refs/main``,
``snapshots/<commit>/``
of relative symlinks) holding tiny SA3 checkpoints under the official repository ids, LoRA files, audio clips."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from sa3_core.wav import read_wav

# Official name -> the tiny fixture folder that stands in for it (the -base ones have the rectified-flow
# objective; medium-base is tiny-medium with its config's objective switched).
TINY_FOR = {
    "small-music": "tiny-small",
    "small-sfx": "tiny-small",
    "small-music-base": "strict/tiny-small-base",
    "small-sfx-base": "strict/tiny-small-base",
    "medium": "tiny-medium",
    "medium-base": "tiny-medium",
}


def _blob_name(path: Path) -> str:
    """The hub's blob names: sha256 for LFS files (the weights), the git blob sha1 for the others."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_repo(
    cache: Path, repo_id: str, source: Path, *, config: dict | None = None, skip: tuple[str, ...] = ()
) -> Path:
    """``models--<org>--<name>/{blobs,refs/main,snapshots/<commit>/...}`` with every file of ``source`` (a model
    folder) as a blob and a relative symlink to it, as ``hf_hub_download`` leaves them. ``config`` replaces
    ``model_config.json``; files whose relative path starts with an entry of ``skip`` are left out.
    Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    staged = repo / ".staged"
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = file.relative_to(source)
        if str(relative).startswith(skip):
            continue
        if config is not None and str(relative) == "model_config.json":
            staged.write_text(json.dumps(config, indent=2))
            file = staged
        blob = repo / "blobs" / _blob_name(file)
        if not blob.exists():
            try:
                os.link(file, blob)  # the fixtures are read-only: share their bytes instead of copying them
            except OSError:
                shutil.copyfile(file, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    staged.unlink(missing_ok=True)
    return snapshot


def base_config(folder: Path) -> dict:
    config = json.loads((folder / "model_config.json").read_text())
    config["model"]["diffusion"]["diffusion_objective"] = "rectified_flow"
    return config


def write_lora(
    path: Path, parts: dict, *, rank: int = 4, alpha: float = 4.0, seed: int = 0, scale: float = 0.05
) -> Path:
    """A LoRA file as the official trainer saves it (``save_lora_safetensors``): fp16 ``lora_A`` / ``lora_B`` for
    every Linear of each part, keys rooted at ``model.`` (DiT) / ``conditioners.`` (conditioner), the
    ``lora_config`` JSON in the metadata. ``parts``: ``{"model.": dit, "conditioners.": conditioners}``."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for root, module in parts.items():
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear):
                fan_out, fan_in = layer.weight.shape
                key = f"{root}{name}.parametrizations.weight.0"
                tensors[f"{key}.lora_A"] = (torch.randn(rank, fan_in, generator=generator) * scale).half()
                tensors[f"{key}.lora_B"] = (torch.randn(fan_out, rank, generator=generator) * scale).half()
    config = {"rank": rank, "alpha": alpha, "adapter_type": "lora"}
    save_file(tensors, str(path), metadata={"lora_config": json.dumps(config)})
    return path


def sine_wave(
    duration: float, sample_rate: int, channels: int = 2, freq: float = 440.0, device: str = "cpu", half: bool = False
) -> torch.Tensor:
    """A (channels, samples) sine of amplitude 0.8, as the official tests' helper makes it."""
    t = torch.linspace(0, duration, int(duration * sample_rate), device=device)
    wave = 0.8 * torch.sin(2 * math.pi * freq * t)
    return (wave.half() if half else wave).expand(channels, -1).clone()


def torchaudio_load(path: Path) -> tuple[torch.Tensor, int]:
    """What ``torchaudio.load`` returns, ``(waveform, sample_rate)``, for a WAV (torchaudio 2.9 needs torchcodec
    for files, which is not installed here)."""
    rate, audio = read_wav(path)
    return audio, rate
