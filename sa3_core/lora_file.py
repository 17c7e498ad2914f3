"""Official SA3 LoRA files: read and check them (safetensors only), and name the modules they adapt.

File format (official ``save_lora_safetensors``)
    A safetensors file of fp16 tensors with a ``lora_config`` JSON string in its metadata
    (``rank``, ``alpha``, ``adapter_type``, ``include``, ``exclude``; ``dropout``, used in training only, is not
    read). Tensor keys name the adapted module relative to the sub-model the official code parametrised::

        model.<DiT module path>.parametrizations.weight.0.lora_A          (DiT, relative to DiTWrapper)
        conditioners.<conditioner module path>.parametrizations.weight.0.lora_B

    We only read safetensors. Pickled checkpoints (``.ckpt``/``.pt``/``.pth``/``.bin``) are refused,
    because unpickling can run arbitrary code. For the same reason the official ``svd_bases_path``
    (a torch pickle of precomputed -XS bases) is not supported: -XS bases always come from the SVD of
    the base weight, which is what the official code does when no bases file is configured (the
    released configs configure none).

Deliberate differences from the official loader (which loads with ``strict=False``)
    - ``include``/``exclude`` metadata: the official code only parametrises modules its filters
      select and saves exactly those, so the saved keys already encode the filters. We check that the
      keys agree with the filters and raise if a file holds tensors for a module it excludes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from .lora_adapter import ADAPTER_TENSORS, ADAPTER_TYPES, Adapter, LoRAError
from .validation import finite_number, json_object, require_finite

# LoRA key prefix -> the model part it adapts. ``model.`` is the official DiTWrapper's attribute that
# holds the DiT; ``conditioners.`` the MultiConditioner's dict of conditioners. Our DiT and
# Conditioners modules are those sub-modules, so the rest of the key is our module path.
DEFAULT_ROOTS: Mapping[str, str] = {"dit": "model.", "conditioner": "conditioners."}

_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_KEY = re.compile(r"^(?P<module>.+)\.parametrizations\.weight\.(?P<index>\d+)\.(?P<tensor>[A-Za-z_]+)$")


# ---------------------------------------------------------------------------------------------------
# Module-name filters (official include/exclude metadata; the gating layer filter uses them too)
# ---------------------------------------------------------------------------------------------------


def expand_brackets(pattern: str) -> list[str]:
    """Official bracket ranges: ``layers[0-2]`` -> ``layers0``, ``layers1``, ``layers2`` (no dot added).

    A range may run downwards (``[3-1]``); several ranges expand to every combination.
    """
    parts = re.split(r"\[(\d+)-(\d+)\]", pattern)
    literals, starts, ends = parts[0::3], parts[1::3], parts[2::3]
    pools = []
    for start, end in zip(starts, ends):
        a, b = int(start), int(end)
        step = 1 if b >= a else -1
        pools.append([str(n) for n in range(a, b + step, step)])
    expanded = []
    for numbers in product(*pools):
        pieces = [literals[0]]
        for number, literal in zip(numbers, literals[1:]):
            pieces += [number, literal]
        expanded.append("".join(pieces))
    return expanded


def matches_any(name: str, patterns: Iterable[str] | None) -> bool:
    """Whether ``name`` contains any (bracket-expanded, stripped) pattern as a substring."""
    return any(p in name for pattern in (patterns or ()) for p in expand_brackets(pattern.strip()))


def _selected_by_filters(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """The official add_lora rule: ``include`` (None = all) minus ``exclude`` (exclude wins)."""
    if include is not None and not matches_any(name, include):
        return False
    return not (exclude is not None and matches_any(name, exclude))


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAConfig:
    """The ``lora_config`` metadata we use, with the official defaults filled in."""

    rank: int
    alpha: float
    adapter_type: str
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class LoRAFile:
    """A parsed LoRA file: one adapter per module, keyed by the module name used in the file."""

    path: str
    name: str
    config: LoRAConfig
    adapters: Mapping[str, Adapter]


def module_name_to_target(module_name: str, roots: Mapping[str, str] = DEFAULT_ROOTS) -> tuple[str, str]:
    """A module name from a LoRA file -> (target, module path inside that target)."""
    for target, prefix in roots.items():
        if module_name.startswith(prefix):
            return target, module_name[len(prefix) :]
    known = ", ".join(repr(p) for p in roots.values())
    raise LoRAError(f"LoRA module {module_name!r} is under none of the known roots ({known})")


def _check_is_safetensors(path: Path) -> None:
    """Refuse pickles by name and by content, before safetensors sees the file."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise LoRAError(
            f"{path}: {path.suffix} LoRA files are PyTorch pickles, which we refuse to load because "
            "unpickling can run arbitrary code. Convert it to .safetensors (the official "
            "convert_lora_ckpt_to_safetensors does this) in an environment you trust."
        )
    if not path.is_file():
        raise LoRAError(f"{path}: LoRA file not found")
    with path.open("rb") as handle:
        head = handle.read(9)
    size = path.stat().st_size
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) == 9 and 0 < header_len <= size - 8 and head[8:9] == b"{":
        return
    if head.startswith(b"PK\x03\x04"):
        kind = "a zip archive, i.e. a torch.save pickle"
    elif head[:1] == b"\x80":
        kind = "a Python pickle"
    else:
        kind = "no safetensors header"
    raise LoRAError(
        f"{path}: not a safetensors file ({kind}). LoRA files are read with safetensors only; pickled "
        "checkpoints are refused because unpickling can run arbitrary code."
    )


def _parse_metadata(metadata: Mapping[str, str] | None, path: Path) -> dict:
    raw = (metadata or {}).get("lora_config")
    return {} if raw is None else json_object(raw, f"{path}: lora_config metadata", LoRAError)


def _patterns(value: object, key: str, path: Path) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise LoRAError(f"{path}: lora_config.{key} must be a list of strings, got {value!r}")


def _infer_rank(grouped: Mapping[str, Mapping[str, Tensor]], path: Path) -> int:
    """The official fallback: the rank of the first lora_A / lora_B / M_xs tensor, in key order."""
    for module in sorted(grouped):
        for name, tensor in sorted(grouped[module].items()):
            if name in ("lora_A", "M_xs"):
                return tensor.shape[0]
            if name == "lora_B":
                return tensor.shape[1]
    raise LoRAError(f"{path}: no lora_A, lora_B or M_xs tensor to infer the rank from")


def _resolve_adapter_type(raw: object, grouped: Mapping[str, Mapping[str, Tensor]], path: Path) -> str:
    """The metadata's adapter type; legacy "dora" becomes rows or cols by its 2-D magnitude shapes."""
    if raw == "dora":
        for module in sorted(grouped):
            magnitude = grouped[module].get("magnitude")
            if magnitude is None:
                continue
            if magnitude.dim() == 2 and magnitude.shape[0] == 1:
                return "dora-cols"  # legacy (1, fan_in)
            return "dora-rows"  # legacy (fan_out, 1), or 1-D: the official default
        return "dora-rows"
    if raw not in ADAPTER_TYPES:
        raise LoRAError(
            f"{path}: unknown adapter_type {raw!r} (supported: {', '.join(ADAPTER_TYPES)}, and legacy 'dora')"
        )
    return raw


def _number(config: Mapping, key: str, default: float | None, path: Path) -> float | None:
    value = config.get(key)
    if value is None:
        return default
    finite_number(value, f"{path}: lora_config.{key}", LoRAError)
    return value  # as written: an integer rank stays an integer


def read_lora_file(path: str | Path, roots: Mapping[str, str] = DEFAULT_ROOTS) -> LoRAFile:
    """Parse an official SA3 LoRA safetensors file (tensors become fp32 on the CPU)."""
    path = Path(path)
    _check_is_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise LoRAError(f"{path}: cannot read the safetensors file ({exc})") from None
    if not tensors:
        raise LoRAError(f"{path}: the file holds no tensors")
    config = _parse_metadata(metadata, path)

    grouped: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise LoRAError(
                f"{path}: {key!r} is not an SA3 LoRA tensor (expected '<module>.parametrizations.weight.0.<tensor>')"
            )
        if match["index"] != "0":
            raise LoRAError(f"{path}: {key!r} uses parametrization index {match['index']}; LoRA files use index 0")
        if not tensor.is_floating_point():
            raise LoRAError(f"{path}: {key!r} has dtype {tensor.dtype}, expected a floating point tensor")
        require_finite(tensor, f"{path}: {key!r} holds NaN or infinite values; the LoRA file is broken", LoRAError)
        module_name_to_target(match["module"], roots)  # raises for keys outside the DiT and conditioner
        grouped.setdefault(match["module"], {})[match["tensor"]] = tensor.float()

    adapter_type = _resolve_adapter_type(config.get("adapter_type", "lora"), grouped, path)
    rank = _number(config, "rank", None, path)
    rank = _infer_rank(grouped, path) if rank is None else rank
    if rank != int(rank) or rank < 1:
        raise LoRAError(f"{path}: lora_config.rank must be a positive integer, got {rank!r}")
    rank = int(rank)
    alpha = float(_number(config, "alpha", rank, path))
    lora_config = LoRAConfig(
        rank=rank,
        alpha=alpha,
        adapter_type=adapter_type,
        include=_patterns(config.get("include"), "include", path),
        exclude=_patterns(config.get("exclude"), "exclude", path),
    )

    adapters = {}
    expected = set(ADAPTER_TENSORS[adapter_type])
    for module, found in sorted(grouped.items()):
        if set(found) != expected:
            raise LoRAError(
                f"{path}: module {module} holds {sorted(found)}, but a {adapter_type!r} adapter needs "
                f"exactly {sorted(expected)}"
            )
        if not _selected_by_filters(module, lora_config.include, lora_config.exclude):
            raise LoRAError(
                f"{path}: holds tensors for {module}, which its own include/exclude metadata excludes "
                f"(include={lora_config.include}, exclude={lora_config.exclude})"
            )
        if "magnitude" in found and found["magnitude"].dim() == 2 and 1 in found["magnitude"].shape:
            found["magnitude"] = found["magnitude"].reshape(-1)  # legacy (1, n) / (n, 1) magnitudes
        for name, tensor in found.items():
            wanted = 2 if name in ("lora_A", "lora_B", "M_xs") else 1
            if tensor.dim() != wanted:
                raise LoRAError(f"{path}: {module}.{name} must be {wanted}-D, got shape {tuple(tensor.shape)}")
        adapters[module] = Adapter(adapter_type, rank, lora_config.scaling, **found)
    return LoRAFile(path=str(path), name=path.stem, config=lora_config, adapters=adapters)
