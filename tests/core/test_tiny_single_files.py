"""Tiny models in the Comfy-Org single-file layout (sa3_core.tiny.write_tiny_single_files), which carry their
own config in the safetensors metadata, as the e2e tests place them under the Comfy-Org file names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa3_core.checkpoint import CONFIG_METADATA_KEY, CheckpointError, load_components
from sa3_core.pipeline import StableAudioModel
from sa3_core.tiny import write_tiny_checkpoint, write_tiny_single_files


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("tiny-single")
    folder = write_tiny_checkpoint(base / "tiny-small", "small", seed=3)
    model, encoder = write_tiny_single_files(
        folder, base / "stable_audio_3_small_music.safetensors", base / "t5gemma_b_b_ul2.safetensors"
    )
    return folder, model, encoder


def test_single_files_hold_the_folders_weights_and_config(tiny: tuple[Path, Path, Path]) -> None:
    folder, model_file, encoder_file = tiny
    single = StableAudioModel.from_pretrained(model_file, "cpu", torch.float32, text_encoder_path=encoder_file)
    official = StableAudioModel.from_pretrained(folder, "cpu", torch.float32)
    assert dataclasses.replace(single.config, source="") == dataclasses.replace(official.config, source="")
    assert "sa3_model_config metadata" in single.config.source
    for part in ("dit", "autoencoder", "conditioners"):
        mine, theirs = getattr(single, part).state_dict(), getattr(official, part).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), part
    encoder, reference = single.text_encoder.model, official.text_encoder.model
    assert encoder.config.encoder.to_dict() == reference.config.encoder.to_dict()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in encoder.state_dict().items())
    audio = single.generate(prompt="abcd", duration=1.0, seed=1, steps=2)
    assert audio.shape == (1, 2, 44100) and audio.abs().max() > 0


def test_without_the_metadata_a_tiny_file_is_matched_against_the_presets(
    tiny: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, model_file, _ = tiny
    bare = tmp_path / "stable_audio_3_bare.safetensors"
    save_file(load_file(str(model_file)), str(bare))  # same tensors, no metadata
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_components(bare, device="cpu", dtype=torch.float32, load_text_encoder=False)


def test_unreadable_metadata_config_is_named(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, model_file, _ = tiny
    for text, message in [("{not json", "is not valid JSON"), (json.dumps([1, 2]), "must be a JSON object")]:
        broken = tmp_path / "stable_audio_3_broken.safetensors"
        save_file(load_file(str(model_file)), str(broken), metadata={CONFIG_METADATA_KEY: text})
        with pytest.raises(CheckpointError, match=f"{CONFIG_METADATA_KEY}' {message}"):
            load_components(broken, device="cpu", dtype=torch.float32, load_text_encoder=False)
