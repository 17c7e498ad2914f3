"""sa3_core.hub: official names -> local folders, offline (Hugging Face cache, then the user's models folders)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from official_assets import TINY_FOR, add_repo

from sa3_core import StableAudioModel
from sa3_core.hub import MODEL_REPOS, ModelNotFoundError, resolve_autoencoder, resolve_model

REPO = Path(__file__).resolve().parents[2]


def snapshot_of(cache: Path, repo_id: str) -> Path:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


@pytest.mark.parametrize("name", list(MODEL_REPOS))
def test_every_official_name_resolves_to_its_cached_snapshot(official_cache: Path, name: str) -> None:
    resolved = resolve_model(name)
    assert resolved.folder == snapshot_of(official_cache, MODEL_REPOS[name])
    assert resolved.text_encoder is None  # the snapshot has its own t5gemma-b-b-ul2/


def test_refs_main_picks_the_snapshot_and_incomplete_ones_are_skipped(tmp_path: Path, fixtures_dir: Path) -> None:
    cache = tmp_path / "hub"
    repo_id = MODEL_REPOS["small-music"]
    old = add_repo(cache, repo_id, fixtures_dir / "tiny-small")
    refs = cache / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    old_commit = refs.read_text()
    # A newer revision whose download stopped after the config: refs/main points at it, it has no weights.
    new = old.parent / ("f" * 40)
    new.mkdir()
    (new / "model_config.json").symlink_to(os.path.relpath(old / "model_config.json", new))
    refs.write_text(new.name)
    with pytest.raises(ModelNotFoundError):
        resolve_model("small-music", cache_dir=cache)
    refs.write_text(old_commit)
    assert resolve_model("small-music", cache_dir=cache).folder == old


def test_models_folders_after_the_cache_argument_before_environment(
    tmp_path: Path, fixtures_dir: Path, monkeypatch
) -> None:
    empty_cache = tmp_path / "empty-hub"
    comfy_models = tmp_path / "ComfyUI" / "models"  # a ComfyUI models folder as it is
    (comfy_models / "stable_audio_3").mkdir(parents=True)
    (comfy_models / "stable_audio_3" / "small-sfx").symlink_to(fixtures_dir / "tiny-small")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "stable-audio-3-small-sfx").symlink_to(fixtures_dir / "tiny-medium")
    monkeypatch.setenv("SA3_MODELS_DIR", os.pathsep.join([str(tmp_path / "nowhere"), str(comfy_models)]))

    assert resolve_model("small-sfx", cache_dir=empty_cache).folder == comfy_models / "stable_audio_3" / "small-sfx"
    assert (
        resolve_model("small-sfx", models_dir=mine, cache_dir=empty_cache).folder == mine / "stable-audio-3-small-sfx"
    )
    cache = tmp_path / "hub"
    add_repo(cache, MODEL_REPOS["small-sfx"], fixtures_dir / "tiny-small")
    assert resolve_model("small-sfx", models_dir=mine, cache_dir=cache).folder == snapshot_of(
        cache, MODEL_REPOS["small-sfx"]
    )


def test_a_missing_model_lists_every_place_searched(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SA3_MODELS_DIR", str(tmp_path / "env-models"))
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("medium-base", models_dir=tmp_path / "arg-models", cache_dir=tmp_path / "hub")
    message = str(error.value)
    for place in (
        f"Hugging Face cache {tmp_path / 'hub'}: stabilityai/stable-audio-3-medium-base",
        str(tmp_path / "arg-models" / "stable-audio-3-medium-base"),
        str(tmp_path / "arg-models" / "medium-base"),
        str(tmp_path / "arg-models" / "stable_audio_3" / "medium-base"),
        str(tmp_path / "env-models" / "stable_audio_3" / "stable-audio-3-medium-base"),
    ):
        assert place in message
    assert "nothing is downloaded" in message and "hf download stabilityai/stable-audio-3-medium-base" in message
    assert "SA3_MODELS_DIR" in message
    assert isinstance(error.value, FileNotFoundError)


def test_names_paths_and_unknown_names(official_cache: Path, fixtures_dir: Path) -> None:
    assert resolve_model(fixtures_dir / "tiny-small").folder == fixtures_dir / "tiny-small"
    assert resolve_model(str(fixtures_dir / "tiny-small" / "model.safetensors")).folder.name == "model.safetensors"
    with pytest.raises(ModelNotFoundError, match="not found .*official name: small-music, small-music-base"):
        resolve_model("large")
    with pytest.raises(ModelNotFoundError, match="not found .*official name: same-s, same-l"):
        resolve_autoencoder("same-m")


def test_autoencoder_names_use_a_cached_sa3_model_first(tmp_path: Path, fixtures_dir: Path) -> None:
    """As the official AutoencoderModelConfig.resolve: small-music, then small-sfx, then the SAME-S repository."""
    cache = tmp_path / "hub"
    with pytest.raises(ModelNotFoundError, match="stabilityai/SAME-S"):
        resolve_autoencoder("same-s", cache_dir=cache)
    same_s = add_repo(cache, "stabilityai/SAME-S", fixtures_dir / "tiny-small")
    assert resolve_autoencoder("same-s", cache_dir=cache) == same_s
    sfx = add_repo(cache, MODEL_REPOS["small-sfx"], fixtures_dir / "tiny-small")
    assert resolve_autoencoder("same-s", cache_dir=cache) == sfx
    music = add_repo(cache, MODEL_REPOS["small-music"], fixtures_dir / "tiny-small")
    assert resolve_autoencoder("same-s", cache_dir=cache) == music
    medium = add_repo(cache, MODEL_REPOS["medium"], fixtures_dir / "tiny-medium")
    assert resolve_autoencoder("same-l", cache_dir=cache) == medium


def test_text_encoder_cached_under_the_repo_the_config_names(tmp_path: Path, fixtures_dir: Path, monkeypatch) -> None:
    """A model whose config names its T5Gemma in another repository (repo_id + subfolder, which the official
    code loads through transformers) finds it there in the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    # tiny-small's config names repo_id stabilityai/stable-audio-3-small-music; small-sfx has no T5Gemma of its own.
    sfx = add_repo(cache, MODEL_REPOS["small-sfx"], fixtures_dir / "tiny-small", skip=("t5gemma-b-b-ul2",))
    assert not (sfx / "t5gemma-b-b-ul2").exists()
    assert resolve_model("small-sfx", cache_dir=cache).text_encoder is None  # not cached anywhere: the loader says so
    music = add_repo(cache, MODEL_REPOS["small-music"], fixtures_dir / "tiny-small")
    assert resolve_model("small-sfx", cache_dir=cache).text_encoder == music / "t5gemma-b-b-ul2"

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model = StableAudioModel.from_pretrained("small-sfx", device="cpu")
    reference = StableAudioModel.from_pretrained(fixtures_dir / "tiny-small", device="cpu")
    kwargs = dict(prompt="piano drums", duration=1.0, steps=2, seed=5)
    assert torch.equal(model.generate(**kwargs), reference.generate(**kwargs))


def test_loading_a_name_never_touches_the_network(official_cache: Path, monkeypatch) -> None:
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("network access while loading a cached model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    model = StableAudioModel.from_pretrained("small-music", device="cpu")
    assert model.generate(prompt="piano", duration=0.5, steps=1, seed=0).shape == (1, 2, 22050)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(official_cache.parent / "empty"))
    with pytest.raises(ModelNotFoundError):  # absent: an error, not a download
        StableAudioModel.from_pretrained("small-music", device="cpu")


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_the_hub_cache_variables_are_respected(hub_cache: Path, variable: str) -> None:
    """In a fresh process (the hub reads them at import), as a user sets them."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_HOME", "SA3_MODELS_DIR")}
    env[variable] = str(hub_cache if variable == "HF_HUB_CACHE" else hub_cache.parent)  # HF_HOME/hub
    code = "from sa3_core.hub import resolve_model; print(resolve_model('medium').folder)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == snapshot_of(hub_cache, MODEL_REPOS["medium"])


def test_every_name_loads_its_checkpoint(official_cache: Path, fixtures_dir: Path) -> None:
    """The weights and raw config behind each name are the stand-in's (the -base ones are rectified flow)."""
    from safetensors.torch import load_file

    for name, repo_id in MODEL_REPOS.items():
        model = StableAudioModel.from_pretrained(name, device="cpu")
        snapshot = snapshot_of(official_cache, repo_id)
        assert model.model_config == json.loads((snapshot / "model_config.json").read_text())
        assert model.config.is_base == name.endswith("-base")
        expected = load_file(fixtures_dir / TINY_FOR[name] / "model.safetensors")
        dit = model.dit.state_dict()
        assert all(
            torch.equal(dit[k[len("model.model.") :]], v) for k, v in expected.items() if k.startswith("model.model.")
        )
