"""Loading SA3 weights from disk, strictly and offline.

Accepted inputs:

1. an official model folder: ``model_config.json``, ``model.safetensors`` and the T5Gemma folder the
   config names (``t5gemma-b-b-ul2/``, resolved next to the config);
2. a standalone SAME autoencoder folder (``{"sample_rate": ..., "model": {encoder, decoder, ...}}`` and
   bare ``encoder.* / decoder.* / bottleneck.*`` keys), through :func:`load_autoencoder`;
3. a Comfy-Org single file (``stable_audio_3_*.safetensors``): the official key layout in one file with
   no config. The variant (small or medium) is read from the tensor shapes and the config comes from
   ``presets/`` (reconstructed configs, see the fixture notes); whether it is a ``-base`` model cannot be
   told from weights, so the caller says so (``base=``). Its text encoder is the separate
   ``t5gemma_b_b_ul2.safetensors`` (:func:`load_text_encoder`). A single file may instead carry its
   own config in its safetensors metadata (``sa3_model_config``, as the tiny test files of
   ``sa3_core.tiny`` do; a text encoder file its non-default encoder fields in
   ``sa3_text_encoder_config``); the real Comfy-Org files carry none.

Rules: safetensors only (pickle files are refused by name and by content, never opened); every expected
tensor present with the expected shape, otherwise one error that names the file and lists what is
missing, unexpected or differently shaped; everything is checked before any weight is assigned. Modules
are built on the ``meta`` device and the loaded tensors are assigned to them, so weights are never held
twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import nn

from .conditioners import Conditioners
from .config import AutoencoderConfig, ConfigError, ModelConfig, autoencoder_config_from_dict
from .dit import DiffusionTransformer
from .ops import FLOAT8_DTYPES, OPS, storing
from .same import SAMEAutoencoder
from .t5gemma import (
    COMFY_IGNORED_PREFIXES,
    COMFY_SPIECE_KEY,
    T5GemmaTextEncoder,
    TextEncoderError,
    comfy_key_to_transformers,
    t5gemma_encoder_config,
    t5gemma_encoder_sizes,
    t5gemma_folder_config,
    transformers_key_to_comfy,
)
from .tokenizer import TokenizerError, tokenizer_from_sentencepiece
from .validation import json_file_object, json_object, require_finite

Shape = tuple[int, ...]
Operations = Any  # see sa3_core.ops

DIT_PREFIX = "model.model."
AUTOENCODER_PREFIX = "pretransform.model."
CONDITIONER_PREFIX = "conditioner.conditioners."

PRESETS_DIR = Path(__file__).parent / "presets"
CONFIG_METADATA_KEY = "sa3_model_config"  # a single file's own model_config.json (JSON text)
TEXT_ENCODER_CONFIG_METADATA_KEY = "sa3_text_encoder_config"  # encoder fields a T5Gemma file's shapes cannot tell
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_LIST_LIMIT = 10  # names listed per category in an error


class CheckpointError(ValueError):
    """A weights file or folder we refuse to load; the message names the file."""


# --------------------------------------------------------------------------------------------------
# safetensors files
# --------------------------------------------------------------------------------------------------


class TensorSource(Protocol):
    """Names and shapes of some tensors, and a way to read one."""

    name: str
    shapes: dict[str, Shape]

    def read(self, key: str) -> torch.Tensor: ...


class SafetensorsFile:
    """An opened ``.safetensors`` file: names, shapes and dtypes from its header; tensors read on demand.

    Opening validates the header and that the data section covers every tensor, so a truncated file
    fails here, before anything is loaded.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = str(self.path)
        _refuse_pickle(self.path)
        try:
            self._file = safe_open(str(self.path), framework="pt", device="cpu")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except Exception as exc:  # safetensors raises its own SafetensorError for bad headers / truncation
            raise CheckpointError(f"{self.path}: not a valid safetensors file, or truncated ({exc})") from None
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, str] = {}
        for key in self._file.keys():
            tensor_slice = self._file.get_slice(key)
            self.shapes[key] = tuple(tensor_slice.get_shape())
            self.dtypes[key] = tensor_slice.get_dtype()

    def metadata(self) -> dict[str, str]:
        return self._file.metadata() or {}

    def read(self, key: str) -> torch.Tensor:
        """One tensor; a floating-point one must be finite (NaN weights only ever produce noise)."""
        tensor = self._file.get_tensor(key)
        require_finite(
            tensor, f"{self.path}: tensor {key} holds NaN or infinite values; the file is damaged", CheckpointError
        )
        return tensor


class _DictSource:
    """A ``{key: tensor}`` mapping seen as a :class:`TensorSource`."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], name: str):
        self.name = name
        self._tensors = tensors
        self.shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def read(self, key: str) -> torch.Tensor:
        return self._tensors[key]


def _refuse_pickle(path: Path) -> None:
    """Pickle checkpoints can run code when opened: refuse them by name and by their first bytes."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: is a PyTorch pickle checkpoint ({path.suffix}); only .safetensors files are loaded "
            "(pickle files can run code and are never opened)"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a .safetensors file") from None
    # A safetensors file is an 8-byte header length, then the JSON header: byte 8 is "{". Its first byte
    # is that length's low byte, so it can be 0x80 like a pickle's protocol marker (header of 1408 bytes).
    safetensors_like = head[8:9] == b"{"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and not safetensors_like):
        raise CheckpointError(
            f"{path}: holds a PyTorch pickle (zip/pickle) despite its name; only safetensors content is "
            "loaded (pickle files can run code and are never opened)"
        )


# --------------------------------------------------------------------------------------------------
# Strict key / shape checks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyReport:
    """How a file's tensors differ from what a module expects."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, Shape, Shape], ...] = ()  # (key, in file, expected)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = _LIST_LIMIT) -> str:
        lines = []

        def listing(title: str, items: list[str]) -> None:
            if items:
                more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:limit])}{more}")

        listing("missing", list(self.missing))
        listing("unexpected", list(self.unexpected))
        listing("wrong shape", [f"{k} {list(got)} (expected {list(want)})" for k, got, want in self.mismatched])
        return "\n".join(lines)


def compare_shapes(expected: Mapping[str, Shape], found: Mapping[str, Shape]) -> KeyReport:
    """Missing / unexpected / differently shaped keys between two ``{key: shape}`` maps."""
    return KeyReport(
        missing=tuple(sorted(k for k in expected if k not in found)),
        unexpected=tuple(sorted(k for k in found if k not in expected)),
        mismatched=tuple(
            sorted(
                (k, tuple(found[k]), tuple(expected[k]))
                for k in expected
                if k in found and tuple(found[k]) != tuple(expected[k])
            )
        ),
    )


def _shapes(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, Shape]:
    return {prefix + k: tuple(v.shape) for k, v in state.items()}


def module_shapes(module: nn.Module, prefix: str = "") -> dict[str, Shape]:
    """``{prefix + key: shape}`` of everything the module's ``state_dict`` holds (works on meta modules)."""
    return _shapes(module.state_dict(), prefix)


def _raise_report(report: KeyReport, source: str, against: str, hint: str = "") -> None:
    if report.ok:
        return
    counts = f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, {len(report.mismatched)} wrong shape"
    message = f"{source}: tensors do not match {against} ({counts})\n{report.describe()}"
    raise CheckpointError(message + (f"\n  hint: {hint}" if hint else ""))


# --------------------------------------------------------------------------------------------------
# Loading weights into modules
# --------------------------------------------------------------------------------------------------


def load_module_weights(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor] | TensorSource,
    source: str | None = None,
    *,
    prefix: str = "",
    device: torch.device | str | None = None,
    reference: nn.Module | None = None,
) -> nn.Module:
    """Check, then load ``tensors[prefix + key]`` into ``module``.

    The tensors expected are the entries of ``reference.state_dict()`` (default: ``module`` itself). Pass a
    plain ``torch.nn`` build of the same module (on ``meta`` it costs nothing) when ``module``'s layers only
    create their tensors while loading, as the newest ComfyUI's dynamic-VRAM ``Linear`` does (``weight`` is
    None until its ``_load_from_state_dict`` runs), so ``module.state_dict()`` cannot say what they expect.

    Every expected key must be present with the same shape and no other ``prefix*`` key may exist;
    otherwise one :class:`CheckpointError` names ``source`` and the differences, and the module is left
    untouched. How the values land is :func:`_load_checked`'s rule.
    """
    src = tensors if hasattr(tensors, "read") else _DictSource(tensors, source or "<tensors>")
    expected = (reference if reference is not None else module).state_dict()
    found = {k: s for k, s in src.shapes.items() if k.startswith(prefix)}
    _raise_report(compare_shapes(_shapes(expected, prefix), found), source or src.name, type(module).__name__)
    _load_checked(module, expected, src, prefix, device)
    return module


def _load_checked(
    module: nn.Module,
    expected: Mapping[str, torch.Tensor],
    src: TensorSource,
    prefix: str,
    device: torch.device | str | None,
) -> None:
    """Load already-checked tensors; ``expected`` is a plain build's ``state_dict()`` (names, shapes, dtypes).

    A module whose tensors all exist on a real device gets the values copied in place, each converted to
    that tensor's dtype and device. Otherwise (built on ``meta``, or with layers that create their tensors
    while loading) the values are read, converted to the dtype of the module's own tensor - for a tensor the
    module does not have yet, the plain build's dtype, i.e. the dtype asked for - on ``device`` (default
    CPU), and given to ``module.load_state_dict(assign=True)``: every layer's own loader runs and keeps the
    tensor it is given (assign), so no weight is held twice. The result is checked against ``expected``.
    """
    targets = module.state_dict(keep_vars=True)
    unloadable = [n for n, b in module.named_buffers() if b.is_meta and n not in targets]
    if unloadable:  # non-persistent buffers built on meta would stay without values
        raise RuntimeError(f"{type(module).__name__}: meta buffers not in the checkpoint: {', '.join(unloadable)}")
    if targets.keys() == expected.keys() and not any(t.is_meta for t in targets.values()):
        with torch.no_grad():
            for key, target in targets.items():
                target.copy_(src.read(prefix + key).to(device=target.device, dtype=target.dtype))
        return
    target_device = torch.device(device) if device is not None else torch.device("cpu")
    loaded = {
        key: src.read(prefix + key).to(device=target_device, dtype=targets.get(key, like).dtype)
        for key, like in expected.items()
    }
    name = type(module).__name__
    try:
        module.load_state_dict(loaded, strict=True, assign=True)
    except RuntimeError as exc:  # the layers of these operations want other tensors than a torch.nn build
        raise CheckpointError(
            f"{src.name}: {name} built with these operations refused the checkpoint's tensors ({exc})"
        ) from None
    report = compare_shapes(_shapes(expected), _shapes(module.state_dict()))
    left_on_meta = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
    if not report.ok or left_on_meta:  # layers that accepted a tensor but hold something else
        details = report.describe() or f"  still on meta: {', '.join(left_on_meta[:_LIST_LIMIT])}"
        raise CheckpointError(
            f"{src.name}: {name} built with these operations did not end up holding the checkpoint's tensors\n{details}"
        )


# --------------------------------------------------------------------------------------------------
# Presets and variant detection (single files carry no config)
# --------------------------------------------------------------------------------------------------

VARIANTS = ("small", "medium")


def preset_config(variant: str, *, base: bool = False) -> ModelConfig:
    """The reconstructed ``model_config.json`` of the real small or medium model.

    ``base=True`` gives the ``-base`` (rectified flow, Euler) model; post-trained models use rf_denoiser.
    The weights of the two are indistinguishable, so this must come from the user.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SA3 variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    path = PRESETS_DIR / f"{variant}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if base:
        data["model"]["diffusion"]["diffusion_objective"] = "rectified_flow"
    return ModelConfig.from_dict(data, source=f"{path} ({'base' if base else 'post-trained'} preset)")


def detect_variant(shapes: Mapping[str, Shape], source: str = "<weights>") -> str:
    """'small' or 'medium' from an SA3 checkpoint's tensor shapes (ComfyUI's detection rule).

    The DiT's self-attention ``to_qkv`` is 5 x width for differential attention (medium) and 3 x width
    otherwise. The rest (autoencoder included) is then checked tensor by tensor against that preset.
    """
    qkv = shapes.get(DIT_PREFIX + "transformer.layers.0.self_attn.to_qkv.weight")
    if qkv is None or len(qkv) != 2:
        raise CheckpointError(
            f"{source}: not an SA3 checkpoint (no {DIT_PREFIX}transformer.layers.0.self_attn.to_qkv.weight)"
        )
    if qkv[0] == 5 * qkv[1]:
        return "medium"
    if qkv[0] == 3 * qkv[1]:
        return "small"
    raise CheckpointError(f"{source}: unrecognised DiT attention shape {list(qkv)}")


def detect_autoencoder_variant(shapes: Mapping[str, Shape], source: str = "<weights>", *, prefix: str = "") -> str:
    """'SAME-S' or 'SAME-L' from the autoencoder's tensor names (SAME-L's decoder has 12 layers)."""
    if prefix + "decoder.layers.3.transformers.0.pre_norm.alpha" not in shapes:
        raise CheckpointError(f"{source}: no SAME autoencoder weights ({prefix}decoder.layers.3.transformers.*)")
    return "SAME-L" if prefix + "decoder.layers.3.transformers.11.pre_norm.alpha" in shapes else "SAME-S"


# --------------------------------------------------------------------------------------------------
# Building the modules
# --------------------------------------------------------------------------------------------------


def build_modules(
    config: ModelConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    autoencoder_dtype: torch.dtype | None = None,
    weight_dtype: torch.dtype | None = None,
    operations: Operations = OPS,
    attention_backend: str = "auto",
) -> dict[str, nn.Module]:
    """The three checkpoint modules, keyed by their prefix in ``model.safetensors``.

    ``{"model.model.": DiffusionTransformer, "pretransform.model.": SAMEAutoencoder,
    "conditioner.conditioners.": Conditioners}``. Use ``device="meta"`` to build without memory.
    ``autoencoder_dtype`` (default ``dtype``) lets SAME differ (see sa3_core.precision). ``weight_dtype``
    (a float8 dtype, or None) stores the DiT's Linear / Conv1d weight matrices in that dtype while the DiT
    computes in ``dtype`` (``operations`` must cast weights at use, as :data:`sa3_core.ops.OPS` and
    ``comfy.ops.manual_cast`` do; build float8 modules on ``meta`` and load them).
    """
    dit_operations = operations
    if weight_dtype is not None and weight_dtype != dtype:
        if weight_dtype not in FLOAT8_DTYPES:
            raise ValueError(f"weight storage dtype must be one of {FLOAT8_DTYPES} or None, got {weight_dtype}")
        dit_operations = storing(operations, weight_dtype)
    dit = DiffusionTransformer(
        config.dit, operations=dit_operations, device=device, dtype=dtype, attention_backend=attention_backend
    )
    if dit_operations is not operations:
        dit.compute_dtype = dtype or torch.get_default_dtype()  # its weights' dtype is not the compute dtype
    return {
        DIT_PREFIX: dit,
        AUTOENCODER_PREFIX: SAMEAutoencoder(
            config.autoencoder,
            operations=operations,
            device=device,
            dtype=autoencoder_dtype or dtype,
            attention_backend=attention_backend,
        ),
        CONDITIONER_PREFIX: Conditioners(config.conditioning, operations=operations, device=device, dtype=dtype),
    }


# --------------------------------------------------------------------------------------------------
# Text encoder (HF folder or Comfy-Org single file)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderOptions:
    """How to build the T5Gemma prompt encoder.

    ``add_bos`` / ``add_eos`` / ``padding_side`` only apply to a single file, whose SentencePiece model
    carries no such settings; the defaults (no BOS/EOS, right padding) are what ComfyUI and the
    official MLX port do. A folder's tokenizer follows its own ``tokenizer_config.json``, as the official
    PyTorch code does. ``config_overrides`` set encoder fields a single file cannot tell (tests use it
    for tiny encoders).
    """

    max_length: int = 256
    add_bos: bool = False
    add_eos: bool = False
    padding_side: str = "right"
    config_overrides: Mapping[str, Any] = field(default_factory=dict)


class _PendingTextEncoder:
    """A text encoder whose files have been checked; :meth:`build` loads it."""

    def __init__(
        self,
        path: Path,
        file: SafetensorsFile | None = None,
        key_map: dict[str, str] | None = None,
        tokenizer: Any = None,
        config_overrides: Mapping[str, Any] | None = None,
    ):
        self.path = path
        self.file = file  # None for an HF folder
        self.key_map = key_map or {}  # transformers name -> key in the file
        self.tokenizer = tokenizer  # built from the file's SentencePiece bytes
        self.config_overrides = dict(config_overrides or {})  # the file's metadata, then the caller's

    def build(
        self, *, device, dtype, options: TextEncoderOptions, weight_dtype: torch.dtype | None = None
    ) -> T5GemmaTextEncoder:
        try:
            if self.file is None:
                return T5GemmaTextEncoder.from_folder(
                    self.path, device=device, dtype=dtype, weight_dtype=weight_dtype, max_length=options.max_length
                )
            state_dict = {k: self.file.read(v) for k, v in self.key_map.items()}
            return T5GemmaTextEncoder.from_state_dict(
                state_dict,
                self.tokenizer,
                device=device,
                dtype=dtype,
                source=str(self.path),
                weight_dtype=weight_dtype,
                max_length=options.max_length,
                **self.config_overrides,
            )
        except TextEncoderError as exc:
            raise CheckpointError(str(exc)) from None


def _check_text_encoder(path: Path, options: TextEncoderOptions, named_by: str = "") -> _PendingTextEncoder:
    """Check a T5Gemma folder or Comfy-Org file without loading weights."""
    if path.is_dir():
        _check_text_encoder_folder(path)
        return _PendingTextEncoder(path)
    if not path.exists():
        why = f" ({named_by})" if named_by else ""
        raise CheckpointError(f"{path}: T5Gemma text encoder not found{why}")
    return _check_text_encoder_file(path, options)


def _check_text_encoder_folder(folder: Path) -> None:
    """The files a T5Gemma folder needs, then its encoder tensors by name and shape against its config.

    Decoder and LM-head tensors (the official folder holds the whole encoder-decoder model, encoder
    tensors as ``model.encoder.*``) are not used and not checked, as transformers ignores them too.
    """
    from transformers import T5GemmaEncoderModel

    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json; not a T5Gemma text encoder folder")
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        extra = f" (found {', '.join(pickles)}: pickle files are never opened)" if pickles else ""
        raise CheckpointError(f"{folder}: no model.safetensors{extra}")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        raise CheckpointError(f"{folder}: no tokenizer.json or tokenizer.model")
    try:
        config = t5gemma_folder_config(folder)
    except TextEncoderError as exc:
        raise CheckpointError(str(exc)) from None
    with torch.device("meta"):
        expected = module_shapes(T5GemmaEncoderModel(config))
    found: dict[str, Shape] = {}
    for weights in _weight_files(folder):
        for key, shape in SafetensorsFile(weights).shapes.items():
            name = comfy_key_to_transformers(key) or key  # model.encoder.X (full model) -> encoder.X
            if name.startswith("encoder."):
                found[name] = shape
    _raise_report(compare_shapes(expected, found), str(folder), "a T5Gemma encoder")


def _weight_files(folder: Path) -> list[Path]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` names."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map")
    return [folder / name for name in sorted(set(weight_map.values()))]


def _check_text_encoder_file(path: Path, options: TextEncoderOptions) -> _PendingTextEncoder:
    """The Comfy-Org file: ``model.encoder.*`` weights + the ``spiece_model`` tokenizer bytes.

    The tokenizer is built here (it is small) so that a bad one fails before any weight is read.
    """
    from transformers import T5GemmaEncoderModel

    file = SafetensorsFile(path)
    config_overrides = {**_metadata_json(file, TEXT_ENCODER_CONFIG_METADATA_KEY, {}), **options.config_overrides}
    key_map: dict[str, str] = {}
    unexpected = []
    for key in file.shapes:
        hf_key = comfy_key_to_transformers(key)
        if hf_key is not None:
            key_map[hf_key] = key
        elif key != COMFY_SPIECE_KEY and not key.startswith(COMFY_IGNORED_PREFIXES):
            unexpected.append(key)
    if not key_map:
        raise CheckpointError(f"{path}: not a T5Gemma text encoder file (no model.encoder.* tensors)")
    spiece = file.shapes.get(COMFY_SPIECE_KEY)
    if spiece is None or len(spiece) != 1 or file.dtypes[COMFY_SPIECE_KEY] != "U8":
        raise CheckpointError(
            f"{path}: no tokenizer (a 1-D uint8 '{COMFY_SPIECE_KEY}' tensor); "
            "expected the Comfy-Org t5gemma_b_b_ul2.safetensors"
        )
    found = {hf: file.shapes[key] for hf, key in key_map.items()}
    try:
        sizes = t5gemma_encoder_sizes(found, str(path), int(config_overrides.get("head_dim", 64)))
        config = t5gemma_encoder_config(**sizes, **config_overrides)
    except TextEncoderError as exc:
        raise CheckpointError(str(exc)) from None
    with torch.device("meta"):
        expected = module_shapes(T5GemmaEncoderModel(config))
    report = compare_shapes(expected, found)
    report = KeyReport(
        missing=tuple(transformers_key_to_comfy(k) for k in report.missing),
        unexpected=tuple(transformers_key_to_comfy(k) for k in report.unexpected) + tuple(sorted(unexpected)),
        mismatched=tuple((transformers_key_to_comfy(k), a, b) for k, a, b in report.mismatched),
    )
    _raise_report(report, str(path), "a T5Gemma encoder")
    try:
        tokenizer = tokenizer_from_sentencepiece(
            file.read(COMFY_SPIECE_KEY).numpy().tobytes(),
            add_bos=options.add_bos,
            add_eos=options.add_eos,
            padding_side=options.padding_side,
            source=f"{path}:{COMFY_SPIECE_KEY}",
        )
    except TokenizerError as exc:
        raise CheckpointError(str(exc)) from None
    return _PendingTextEncoder(path, file, key_map, tokenizer, config_overrides)


def resolve_text_encoder_path(config: ModelConfig, config_dir: Path) -> Path:
    """Where an official config puts the T5Gemma folder: ``model_path``, else ``subfolder`` next to the config."""
    prompt = config.conditioning.prompt
    if prompt.model_path:
        path = Path(prompt.model_path)
        return path if path.is_absolute() else config_dir / path
    if prompt.subfolder:
        return config_dir / prompt.subfolder
    raise CheckpointError(
        f"{config.source}: the prompt conditioner names no local text encoder folder "
        f"(only repo_id {prompt.repo_id!r}); pass the T5Gemma folder or file explicitly"
    )


def load_text_encoder(
    path: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    weight_dtype: torch.dtype | None = None,
    options: TextEncoderOptions = TextEncoderOptions(),
) -> T5GemmaTextEncoder:
    """The T5Gemma prompt encoder from an HF folder or a Comfy-Org single file, offline and strictly;
    ``weight_dtype`` (float8) stores its Linear / Embedding weights, it computes in ``dtype``."""
    return _check_text_encoder(Path(path), options).build(
        device=device, dtype=dtype, weight_dtype=weight_dtype, options=options
    )


# --------------------------------------------------------------------------------------------------
# SA3 checkpoints
# --------------------------------------------------------------------------------------------------


@dataclass
class SA3Components:
    """Everything an SA3 checkpoint provides, loaded and in eval mode."""

    config: ModelConfig
    dit: DiffusionTransformer
    autoencoder: SAMEAutoencoder
    conditioners: Conditioners
    text_encoder: T5GemmaTextEncoder | None  # None when no text encoder was asked for / available
    source: str  # the weights file
    layout: str  # "folder" (official) or "single_file" (Comfy-Org)


def _folder_weights(folder: Path, what: str) -> Path:
    weights = folder / "model.safetensors"
    if weights.is_file():
        return weights
    candidates = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{weights}: not found; the {what} folder only has {', '.join(pickles)} "
            "(pickle files are never opened: use the .safetensors release)"
        )
    if candidates:
        raise CheckpointError(
            f"{weights}: not found, and several .safetensors files are present "
            f"({', '.join(p.name for p in candidates)}); pass the file to use"
        )
    raise CheckpointError(f"{weights}: not found ({what} folder)")


def _read_json(path: Path) -> dict:
    return json_file_object(path, ConfigError)


def _metadata_json(file: SafetensorsFile, key: str, default: Any) -> Any:
    """A JSON object stored as text in a safetensors file's metadata, or ``default`` when absent."""
    text = file.metadata().get(key)
    return default if text is None else json_object(text, f"{file.name}: metadata {key!r}", CheckpointError)


def _is_standalone_same_config(data: Mapping[str, Any]) -> bool:
    model = data.get("model")
    return "model_type" not in data and isinstance(model, Mapping) and "encoder" in model and "decoder" in model


def _as_model_config(config: ModelConfig | str | Path) -> ModelConfig:
    return config if isinstance(config, ModelConfig) else ModelConfig.from_json(config)


def _check_sa3_weights(
    weights: SafetensorsFile, expected: Mapping[str, Mapping[str, torch.Tensor]], config: ModelConfig
) -> None:
    """One report over all three parts (``{prefix: plain build's state_dict}``); a hint names the variant
    the weights look like."""
    shapes: dict[str, Shape] = {}
    for prefix, state in expected.items():
        shapes.update(_shapes(state, prefix))
    report = compare_shapes(shapes, weights.shapes)
    if report.ok:
        return
    hint = ""
    try:
        looks_like = detect_variant(weights.shapes, weights.name)
        if looks_like != config.variant:
            hint = f"the weights look like a {looks_like} model but {config.source} describes {config.variant}"
    except CheckpointError:
        pass
    _raise_report(report, weights.name, config.source, hint)


def load_components(
    path: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    autoencoder_dtype: torch.dtype | None = None,
    weight_dtype: torch.dtype | None = None,
    text_encoder_path: str | Path | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    text_encoder_device: torch.device | str | None = None,
    load_text_encoder: bool = True,
    text_encoder_options: TextEncoderOptions = TextEncoderOptions(),
    config: ModelConfig | str | Path | None = None,
    base: bool = False,
    operations: Operations = OPS,
    attention_backend: str = "auto",
) -> SA3Components:
    """Load an SA3 model from an official folder or a Comfy-Org single file.

    Args:
        path: the official folder (``model_config.json`` + ``model.safetensors`` + the T5Gemma
            subfolder) or a single ``.safetensors`` file.
        device, dtype: where and in which dtype the DiT, SAME and conditioners live.
        autoencoder_dtype: SAME's dtype when it differs (default ``dtype``; see sa3_core.precision).
        weight_dtype: a float8 dtype to store the weight matrices of the DiT and the text encoder in (each
            is converted as it is read, from whatever dtype the file holds: fp32, fp16, bf16 or float8);
            they compute in ``dtype`` / ``text_encoder_dtype``. None: weights in the compute dtype.
        text_encoder_path: T5Gemma folder or Comfy-Org file; default for a folder is the one its config
            names, for a single file there is none (``text_encoder`` is then None).
        text_encoder_dtype / text_encoder_device: default to ``dtype`` / ``device``.
        load_text_encoder: False skips the text encoder (e.g. ComfyUI loads it through its own node).
        config: a config (object or JSON path) used instead of the folder's ``model_config.json`` or
            the preset (e.g. for single files of other shapes, as in tests).
        base: for a single file with no ``config``: True selects the -base preset (rectified flow).
            Ignored otherwise: a config says it itself.

    The model weights and the text encoder's tensors (names and shapes) are checked before any weight is
    read; nothing is loaded when a check fails.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    te_path: Path | None = Path(text_encoder_path) if text_encoder_path is not None else None
    te_named_by = "text_encoder_path"
    if path.is_dir():
        config_path = path / "model_config.json"
        if config is not None:
            model_config = _as_model_config(config)
        elif not config_path.is_file():
            raise CheckpointError(
                f"{config_path}: not found; expected an official SA3 model folder "
                "(model_config.json, model.safetensors, t5gemma-b-b-ul2/)"
            )
        elif _is_standalone_same_config(_read_json(config_path)):
            raise CheckpointError(f"{path}: is a standalone SAME autoencoder folder; load it with load_autoencoder")
        else:
            model_config = ModelConfig.from_json(config_path)
        weights = SafetensorsFile(_folder_weights(path, "SA3 model"))
        layout = "folder"
        if te_path is None and load_text_encoder:
            te_path = resolve_text_encoder_path(model_config, path)
            te_named_by = f"named by {model_config.source}"
    else:
        weights = SafetensorsFile(path)
        own_config = _metadata_json(weights, CONFIG_METADATA_KEY, None)
        if config is not None:
            model_config = _as_model_config(config)
        elif own_config is not None:
            model_config = ModelConfig.from_dict(own_config, source=f"{weights.name} ({CONFIG_METADATA_KEY} metadata)")
        else:
            model_config = preset_config(detect_variant(weights.shapes, weights.name), base=base)
        layout = "single_file"

    def build(ops: Operations) -> dict[str, nn.Module]:
        return build_modules(
            model_config,
            device="meta",
            dtype=dtype,
            autoencoder_dtype=autoencoder_dtype,
            weight_dtype=weight_dtype,
            operations=ops,
            attention_backend=attention_backend,
        )

    modules = build(operations)
    # What the file must hold (names, shapes, and the dtypes the tensors are stored in) comes from a build with
    # sa3_core's own eager layers: layers of other operations may create their tensors only while loading (the
    # newest ComfyUI's dynamic-VRAM Linear), so their state_dict lacks them. On meta, that build costs nothing.
    plain = modules if operations is OPS else build(OPS)
    expected = {prefix: module.state_dict() for prefix, module in plain.items()}
    _check_sa3_weights(weights, expected, model_config)
    pending_te = None
    if load_text_encoder and te_path is not None:
        pending_te = _check_text_encoder(te_path, text_encoder_options, te_named_by)

    # The text encoder first: it passes through its compute dtype before a float8 weight storage shrinks it,
    # and that transient copy should not come on top of the DiT.
    text_encoder = None
    if pending_te is not None:
        text_encoder = pending_te.build(
            device=text_encoder_device or device,
            dtype=text_encoder_dtype or dtype,
            weight_dtype=weight_dtype,
            options=text_encoder_options,
        )
    for prefix, module in modules.items():
        _load_checked(module, expected[prefix], weights, prefix, device)
        module.eval().requires_grad_(False)
    return SA3Components(
        config=model_config,
        dit=modules[DIT_PREFIX],
        autoencoder=modules[AUTOENCODER_PREFIX],
        conditioners=modules[CONDITIONER_PREFIX],
        text_encoder=text_encoder,
        source=weights.name,
        layout=layout,
    )


# --------------------------------------------------------------------------------------------------
# SAME autoencoder on its own
# --------------------------------------------------------------------------------------------------


@dataclass
class AutoencoderComponents:
    config: AutoencoderConfig
    autoencoder: SAMEAutoencoder
    source: str


def load_autoencoder(
    path: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    config: AutoencoderConfig | None = None,
    operations: Operations = OPS,
    attention_backend: str = "auto",
) -> AutoencoderComponents:
    """Load a SAME autoencoder: a standalone SAME folder or file (bare keys) or the SAME part of an SA3 model.

    A single file without ``config`` gets the SAME-S or SAME-L config of the presets, told apart by its
    tensor names. Tensors of the other SA3 parts in an SA3 file are skipped; anything else is an error.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    if path.is_dir():
        config_path = path / "model_config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: not found; expected a SAME or SA3 model folder")
        data = _read_json(config_path)
        if config is None:
            if _is_standalone_same_config(data):
                config = autoencoder_config_from_dict(data, source=str(config_path))
            else:
                config = ModelConfig.from_dict(data, source=str(config_path)).autoencoder
        weights = SafetensorsFile(_folder_weights(path, "SAME"))
    else:
        weights = SafetensorsFile(path)
    sa3_layout = any(k.startswith(AUTOENCODER_PREFIX) for k in weights.shapes)
    prefix = AUTOENCODER_PREFIX if sa3_layout else ""
    if config is None:
        variant = detect_autoencoder_variant(weights.shapes, weights.name, prefix=prefix)
        config = preset_config("medium" if variant == "SAME-L" else "small").autoencoder

    def build(ops: Operations) -> SAMEAutoencoder:
        return SAMEAutoencoder(config, operations=ops, device="meta", dtype=dtype, attention_backend=attention_backend)

    module = build(operations)
    expected = (module if operations is OPS else build(OPS)).state_dict()  # as in load_components
    found = weights.shapes
    if sa3_layout:  # the DiT and conditioner tensors are expected, just not ours
        found = {k: s for k, s in found.items() if not k.startswith((DIT_PREFIX, CONDITIONER_PREFIX))}
    report = compare_shapes(_shapes(expected, prefix), found)
    _raise_report(
        report,
        weights.name,
        f"a SAME autoencoder ({config.encoder.transformer_depths[0]} layers, width {config.encoder.width})",
    )
    _load_checked(module, expected, weights, prefix, device)
    module.eval().requires_grad_(False)
    return AutoencoderComponents(config=config, autoencoder=module, source=weights.name)
