"""Official model names -> local folders, offline.

The official package downloads ``stabilityai/stable-audio-3-<name>`` from the Hugging Face Hub into the local
Hub cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub`` = ``~/.cache/huggingface/hub``). We never download:
a name is looked up, in this order,

1. in that cache, with huggingface_hub's own lookup (``try_to_load_from_cache``: the ``refs/main``
   snapshot, exactly the files the official package reads), then
2. in the models folders the user names: the ``models_dir`` argument, then ``$SA3_MODELS_DIR`` (several
   folders separated by ``os.pathsep``). In each, ``<folder>/stable-audio-3-<name>/`` or ``<folder>/<name>/``,
   also under ``<folder>/stable_audio_3/`` so that a ComfyUI ``models`` folder works as it is.

A folder counts when it holds ``model_config.json`` and ``model.safetensors`` (the official layout, whose
T5Gemma text encoder sits in the ``t5gemma-b-b-ul2/`` subfolder). When nothing is found the error lists
every place searched and where to put the files.

``try_to_load_from_cache`` has the same signature in huggingface_hub 0.x (transformers 4.x), 1.x and 2.x
(transformers 5.x), and never touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
MODELS_DIR_ENV = "SA3_MODELS_DIR"
COMFY_SUBFOLDER = "stable_audio_3"  # ComfyUI's models/stable_audio_3/

# The official ``model_configs.models``: name -> Hub repository.
MODEL_REPOS = {
    "small-music": "stabilityai/stable-audio-3-small-music",
    "small-music-base": "stabilityai/stable-audio-3-small-music-base",
    "small-sfx": "stabilityai/stable-audio-3-small-sfx",
    "small-sfx-base": "stabilityai/stable-audio-3-small-sfx-base",
    "medium": "stabilityai/stable-audio-3-medium",
    "medium-base": "stabilityai/stable-audio-3-medium-base",
}

# The official ``model_configs.ae_models``: the SA3 models holding that autoencoder, tried first (as the
# official resolve does), then the standalone autoencoder repository.
AUTOENCODER_SOURCES = {
    "same-s": ("stabilityai/stable-audio-3-small-music", "stabilityai/stable-audio-3-small-sfx", "stabilityai/SAME-S"),
    "same-l": ("stabilityai/stable-audio-3-medium", "stabilityai/SAME-L"),
}


# Short names for folders in a models folder: each repository's own name, and its official name.
_SHORT_NAMES = {
    **{repo: name for name, repo in MODEL_REPOS.items()},
    "stabilityai/SAME-S": "same-s",
    "stabilityai/SAME-L": "same-l",
}


class ModelNotFoundError(FileNotFoundError):
    """An official name whose files are in none of the places searched; the message lists them."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are: its folder, and the T5Gemma folder when it is not the folder's own."""

    folder: Path
    text_encoder: Path | None = None


def models_dirs(models_dir: str | Path | None = None) -> list[Path]:
    """The user's models folders, in search order: the argument, then ``$SA3_MODELS_DIR``."""
    dirs = [Path(models_dir)] if models_dir is not None else []
    dirs += [Path(p) for p in os.environ.get(MODELS_DIR_ENV, "").split(os.pathsep) if p]
    return dirs


def _folder_names(repo_id: str) -> list[str]:
    """``stable-audio-3-small-music`` and ``small-music`` for ``stabilityai/stable-audio-3-small-music``."""
    return [repo_id.split("/")[-1], _SHORT_NAMES[repo_id]]


def _cached_folder(repo_id: str, cache_dir: str | Path | None) -> Path | None:
    """The ``refs/main`` snapshot folder of ``repo_id`` in the Hub cache, if it holds the config and weights."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, f, cache_dir=cache_dir) for f in (CONFIG_FILE, WEIGHTS_FILE)]
    if not all(isinstance(f, str) for f in found):
        return None
    config, weights = (Path(f) for f in found)
    return config.parent if config.parent == weights.parent else None


def _hub_cache(cache_dir: str | Path | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)


def _is_model_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def locate(
    repo_ids: tuple[str, ...], name: str, *, models_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The first folder holding one of ``repo_ids`` (in order): Hub cache first, then the models folders."""
    searched = []
    for repo_id in repo_ids:
        folder = _cached_folder(repo_id, cache_dir)
        if folder is not None:
            return folder
        searched.append(f"Hugging Face cache {_hub_cache(cache_dir)}: {repo_id}")
    for root in models_dirs(models_dir):
        for base in (root, root / COMFY_SUBFOLDER):
            for repo_id in repo_ids:
                for folder in (base / n for n in _folder_names(repo_id)):
                    if _is_model_folder(folder):
                        return folder
                    searched.append(str(folder))
    hint = (
        f"download {repo_ids[0]} once (`hf download {repo_ids[0]}`, or run the official stable_audio_3 "
        f"package), or put its folder ({CONFIG_FILE}, {WEIGHTS_FILE}, t5gemma-b-b-ul2/) at <models folder>/"
        f"{_folder_names(repo_ids[0])[0]}/ and pass models_dir=<models folder> or set ${MODELS_DIR_ENV}"
    )
    raise ModelNotFoundError(
        f"{name!r}: no local copy found (nothing is downloaded). Searched:\n  "
        + "\n  ".join(searched)
        + f"\nTo fix: {hint}"
    )


def text_encoder_in_cache(folder: Path, cache_dir: str | Path | None = None) -> Path | None:
    """The T5Gemma folder of a model whose config names it in another Hub repository (``repo_id`` +
    ``subfolder``, read by the official code through transformers), when that is where it is cached;
    None when the model folder has it itself (the usual case) or it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    prompt = ModelConfig.from_json(folder / CONFIG_FILE).conditioning.prompt
    if not (prompt.repo_id and prompt.subfolder) or prompt.model_path or (folder / prompt.subfolder).is_dir():
        return None
    found = try_to_load_from_cache(prompt.repo_id, f"{prompt.subfolder}/config.json", cache_dir=cache_dir)
    return Path(found).parent if isinstance(found, str) else None


def resolve_model(
    name_or_path: str | Path, *, models_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> ResolvedModel:
    """An official name (``small-music``, ``medium-base``, ...) or a path -> the files to load.

    A known name is always a name (write ``./medium`` for a folder called ``medium``); anything else must
    be an existing folder or file.
    """
    name = str(name_or_path)
    if isinstance(name_or_path, str) and name in MODEL_REPOS:
        folder = locate((MODEL_REPOS[name],), name, models_dir=models_dir, cache_dir=cache_dir)
        return ResolvedModel(folder, text_encoder_in_cache(folder, cache_dir))
    return ResolvedModel(_existing_path(name_or_path, MODEL_REPOS))


def resolve_autoencoder(
    name_or_path: str | Path, *, models_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """``same-s`` / ``same-l`` (from a cached SA3 model holding it, else the standalone repository) or a path."""
    if isinstance(name_or_path, str) and name_or_path in AUTOENCODER_SOURCES:
        return locate(AUTOENCODER_SOURCES[name_or_path], name_or_path, models_dir=models_dir, cache_dir=cache_dir)
    return _existing_path(name_or_path, AUTOENCODER_SOURCES)


def _existing_path(path: str | Path, names) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(
            f"{path}: not found (neither an existing folder or file nor an official name: {', '.join(names)})"
        )
    return path
