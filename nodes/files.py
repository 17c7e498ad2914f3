"""Where the pack finds models: ComfyUI's ``folder_paths``.

* ``stable_audio_3`` (``models/stable_audio_3/``, ours): official model folders (a folder holding
  ``model_config.json``, ``model.safetensors`` and ``t5gemma-b-b-ul2/``, as downloaded from
  ``stabilityai/stable-audio-3-*``) and Comfy-Org single files (``stable_audio_3_*.safetensors``).
* ``checkpoints`` (ComfyUI's): Comfy-Org single files named ``stable_audio_3*.safetensors`` where ComfyUI's
  own SA3 support expects them (other checkpoints there are not listed).
* ``text_encoders`` (ComfyUI's): the Comfy-Org ``t5gemma_b_b_ul2.safetensors`` or a T5Gemma folder, needed
  by single files (an official folder brings its own).
* ``loras`` (ComfyUI's): SA3 LoRA files (``.safetensors``).

Extra locations work as for any ComfyUI key, through ``extra_model_paths.yaml`` (``stable_audio_3: ...``).

Messages name files as ``models/<folder>/<name>``, never by the server's absolute paths: node errors are
shown to whoever uses the server (:func:`relative_paths_in_errors` does this for sa3_core's errors, which
name files by their full path, as a library should).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import folder_paths

MODELS_KEY = "stable_audio_3"
CHECKPOINTS_KEY = "checkpoints"
COMFY_ORG_PREFIX = "stable_audio_3"  # stable_audio_3_medium.safetensors, stable_audio_3_small_sfx.safetensors, ...
TEXT_ENCODERS_KEY = "text_encoders"
LORAS_KEY = "loras"

_PACK = Path(__file__).parents[1]  # this pack's folder, as Python imported it

MODEL_CONFIG = "model_config.json"
AUTO_TEXT_ENCODER = "auto"
NO_MODEL = "(no Stable Audio 3 model found - see tooltip)"
NO_LORA = "(no LoRA found in models/loras)"


def register_folders() -> None:
    """Add ``models/stable_audio_3`` to folder_paths (once) and create it, so users see where models go."""
    default = os.path.join(folder_paths.models_dir, MODELS_KEY)
    folder_paths.add_model_folder_path(MODELS_KEY, default, is_default=True)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:
        pass  # a read-only install still works with models from extra_model_paths.yaml


def _folders(key: str) -> list[Path]:
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(key)]
    except KeyError:
        return []


def _shown(key: str) -> str:
    """How messages name a model folder: as ComfyUI's models/ folders are known, wherever it really is."""
    return f"models/{key}"


def hide_paths(text: str) -> str:
    """``text`` with the server's absolute paths replaced: a model folder by its ``models/<key>`` name, this
    pack's folder by ``custom_nodes/<name>``, anything else inside ComfyUI by its path relative to ComfyUI."""
    folders = [
        (str(folder), _shown(key))
        for key in (MODELS_KEY, CHECKPOINTS_KEY, TEXT_ENCODERS_KEY, LORAS_KEY)
        for folder in _folders(key)
    ]
    folders.append((str(Path(folder_paths.models_dir)), "models"))
    folders.append((str(_PACK), f"custom_nodes/{_PACK.name}"))  # e.g. the preset configs sa3_core names
    folders.append((str(Path(folder_paths.base_path)) + os.sep, ""))  # anything else inside ComfyUI
    for absolute, shown in sorted(folders, key=lambda pair: -len(pair[0])):  # the most specific first
        text = text.replace(absolute, shown)
    return text


@contextmanager
def relative_paths_in_errors() -> Iterator[None]:
    """Re-raise a loading error with the model folders' absolute paths replaced (see :func:`hide_paths`)."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as exc:
        message = str(exc)
        shown = hide_paths(message)
        if shown == message:
            raise
        raise ValueError(shown) from None


def list_models() -> list[str]:
    """Official folders (relative paths, ``/``-separated) and single ``.safetensors`` files outside them."""
    found: set[str] = set()
    for base in _folders(MODELS_KEY):
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            here = Path(dirpath)
            if MODEL_CONFIG in filenames and here != base:
                found.add(here.relative_to(base).as_posix())
                dirnames[:] = []  # a model folder's own files (weights, text encoder) are not models
                continue
            found.update((here / f).relative_to(base).as_posix() for f in filenames if f.endswith(".safetensors"))
            dirnames.sort()
    found.update(
        name
        for name in folder_paths.get_filename_list(CHECKPOINTS_KEY)
        if name.endswith(".safetensors") and Path(name).name.lower().startswith(COMFY_ORG_PREFIX)
    )
    return sorted(found)


def _inside(name: str) -> str:
    """A listed name as a relative path that cannot leave its folder (as folder_paths.get_full_path does)."""
    return os.path.relpath(os.path.join(os.sep, name), os.sep)


def resolve_model(name: str) -> Path:
    """The folder or file a Loader entry names; a clear error when it is not there."""
    if name == NO_MODEL or not name:
        raise ValueError(no_model_message())
    for base in _folders(MODELS_KEY):
        path = base / _inside(name)
        if path.is_dir() and (path / MODEL_CONFIG).is_file():
            return path
        if path.is_file() and path.suffix == ".safetensors":
            return path
    checkpoint = folder_paths.get_full_path(CHECKPOINTS_KEY, name) if name.endswith(".safetensors") else None
    if checkpoint is not None:
        return Path(checkpoint)
    raise ValueError(
        f"Stable Audio 3 model {name!r} not found in {_shown(MODELS_KEY)} or {_shown(CHECKPOINTS_KEY)} "
        f"(expected an official model folder with {MODEL_CONFIG}, or a .safetensors file)"
    )


def no_model_message() -> str:
    return (
        f"No Stable Audio 3 model found. Put an official model folder (model_config.json, model.safetensors, "
        f"t5gemma-b-b-ul2/) or a Comfy-Org stable_audio_3_*.safetensors file in {_shown(MODELS_KEY)} (single "
        f"files also in {_shown(CHECKPOINTS_KEY)}), then refresh."
    )


def _part_of_a_folder(name: str) -> bool:
    """A file next to a ``config.json`` belongs to a transformers model folder (the folder is the encoder)."""
    return any((base / name).parent.joinpath("config.json").is_file() for base in _folders(TEXT_ENCODERS_KEY))


def list_text_encoders() -> list[str]:
    """``.safetensors`` files and T5Gemma folders (``config.json`` inside) in models/text_encoders; a
    folder's own weights are not listed a second time as a file."""
    found = set(
        f
        for f in folder_paths.get_filename_list(TEXT_ENCODERS_KEY)
        if f.endswith(".safetensors") and not _part_of_a_folder(f)
    )
    for base in _folders(TEXT_ENCODERS_KEY):
        if base.is_dir():
            found.update(p.name for p in base.iterdir() if p.is_dir() and (p / "config.json").is_file())
    return sorted(found)


def resolve_text_encoder(name: str, model_path: Path) -> Path | None:
    """The text encoder to load: None lets an official folder use its own; ``auto`` for a single file
    picks the one T5Gemma in models/text_encoders."""
    if name != AUTO_TEXT_ENCODER:
        for base in _folders(TEXT_ENCODERS_KEY):
            if (base / _inside(name)).exists():
                return base / _inside(name)
        raise ValueError(f"text encoder {name!r} not found in {_shown(TEXT_ENCODERS_KEY)}")
    if model_path.is_dir():
        return None
    candidates = [n for n in list_text_encoders() if "t5gemma" in n.lower()]
    if not candidates:
        raise ValueError(
            f"{model_path.name} is a single-file checkpoint without a text encoder: put the Comfy-Org "
            "t5gemma_b_b_ul2.safetensors in models/text_encoders and choose it as text_encoder"
        )
    if len(candidates) > 1:
        raise ValueError(
            f"several T5Gemma text encoders in {_shown(TEXT_ENCODERS_KEY)} ({', '.join(candidates)}); "
            "choose one as text_encoder"
        )
    return resolve_text_encoder(candidates[0], model_path)


def list_loras() -> list[str]:
    return [f for f in folder_paths.get_filename_list(LORAS_KEY) if f.endswith(".safetensors")]


def resolve_lora(name: str) -> Path:
    if name == NO_LORA or not name:
        raise ValueError("No LoRA chosen: put SA3 LoRA .safetensors files in models/loras, then refresh")
    path = folder_paths.get_full_path(LORAS_KEY, name)
    if path is None:
        raise ValueError(f"LoRA {name!r} not found in {_shown(LORAS_KEY)}")
    return Path(path)


def fingerprint(path: Path) -> str:
    """Changes when a model file or folder is replaced on disk, so the Loader reloads it."""
    parts = []
    for p in [path / MODEL_CONFIG, path / "model.safetensors"] if path.is_dir() else [path]:
        try:
            stat = p.stat()
            parts.append(f"{p}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}:missing")
    return "|".join(parts)
