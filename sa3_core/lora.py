"""SA3 LoRA files: read them, stack several on a model, set strengths, unload.

File format (official ``save_lora_safetensors``)
    A safetensors file of fp16 tensors with a ``lora_config`` JSON string in its metadata
    (``rank``, ``alpha``, ``adapter_type``, ``dropout``, ``include``, ``exclude``). Tensor keys name the
    adapted module relative to the sub-model the official code parametrised::

        model.<DiT module path>.parametrizations.weight.0.lora_A          (DiT, relative to DiTWrapper)
        conditioners.<conditioner module path>.parametrizations.weight.0.lora_B

    We only read safetensors. Pickled checkpoints (``.ckpt``/``.pt``/``.pth``/``.bin``) are refused,
    because unpickling can run arbitrary code. For the same reason the official ``svd_bases_path``
    (a torch pickle of precomputed -XS bases) is not supported: -XS bases always come from the SVD of
    the base weight, which is what the official code does when no bases file is configured (the
    released configs configure none).

Adapter math (W = the weight entering this adapter: the base weight, or the previous LoRA's output)
    s = alpha / rank, lambda = strength, delta = B @ A (or U @ M_xs @ V^T for the -XS types), all fp32.

    lora, lora-xs           W + (s*lambda*delta).to(W.dtype)
    dora-rows, dora-cols    V = W + s*lambda*delta (fp32), V / (row or column norm + 1e-12) * magnitude
    bora                    row-normalise, * magnitude_r, column-normalise, * magnitude_c
    dora-*-xs, bora-xs      the same with the -XS delta

    Conv1d weights are treated as 2-D matrices (out, in*k). -XS bases U, V are the first ``rank``
    columns of a deterministic fp32 CPU SVD of the *base* weight, with the sign of each U column chosen
    so that its largest-magnitude element is positive (exactly as the official code).

Strength of the normalising types (DoRA/BoRA and their -XS forms): ``dora_mode``
    "official"  the official response: the formula above with lambda, except lambda == 0 returns W.
                It jumps at 0: the renormalisation to the trained magnitudes applies in full for any
                lambda != 0 (official PR #102 measured 43% of the effect at lambda = 1e-5).
    "linear"    (default) the effective weight moves on a straight line from W at 0 to the official
                strength-1 weight D at 1: ``lerp(W, D, lambda) = W + lambda*(D - W)``, in fp32, cast to
                W.dtype. lambda = 1 gives the official weight bit for bit, lambda = 0 gives W, lambda > 1
                extrapolates along the same line.
    Plain LoRA and LoRA-XS are linear in lambda already; both modes give the official weights for them.

Stacking
    LoRAs compose in load order, as the official parametrisation chain: W_eff = p_N(...p_1(p_0(W))).

Mechanism: merged weights, swapped by name
    The stack keeps each adapted module's original weight Parameter. Whenever strengths (or gating)
    change it computes the effective weight of the affected modules and puts it in the module as a new
    Parameter, so sampling runs the plain layers with no per-forward cost. ``unload()`` puts the
    original Parameter objects back, so the base weights are restored bit for bit (they are never
    written to). Nothing but the ``weight`` entry of each module is touched, so the same code works
    on plain ``torch.nn`` layers and on ``comfy.ops`` layers; a host that manages weights itself
    (ComfyUI's ModelPatcher) builds the stack with ``apply_to_model=False`` and turns
    ``effective_weights()`` into its own weight patches. Do not move or cast the model while LoRAs
    are applied: unload first, then load again.

Deliberate differences from the official loader (which loads with ``strict=False``)
    - Every file tensor must land on a module with a matching shape; otherwise we raise before any
      weight changes (the official loader ignores unknown keys silently).
    - Modules without tensors in the file are not touched. The official code also parametrises
      them, which is the identity for LoRA/-XS and the identity up to rounding for DoRA/BoRA.
    - ``include``/``exclude`` metadata: the official code only parametrises modules its filters
      select and saves exactly those, so the saved keys already encode the filters. We check that the
      keys agree with the filters and raise if a file holds tensors for a module it excludes.
    - Per-step gating (official ``lora_configs``): LoRAs that no gate names are enabled; the official
      code leaves them in whatever state the previous generation left them.
    - Separate strengths for the DiT and the conditioner (the official docs describe them; the
      official code applies one strength to both).
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from .masks import finite_number

ADAPTER_TYPES = ("lora", "dora-rows", "dora-cols", "bora", "lora-xs", "dora-rows-xs", "dora-cols-xs", "bora-xs")
DORA_MODES = ("linear", "official")

# Which tensors a file holds for each adapter type (the official ``name_is_lora`` names).
_TENSORS = {
    "lora": ("lora_A", "lora_B"),
    "dora-rows": ("lora_A", "lora_B", "magnitude"),
    "dora-cols": ("lora_A", "lora_B", "magnitude"),
    "bora": ("lora_A", "lora_B", "magnitude_r", "magnitude_c"),
    "lora-xs": ("M_xs",),
    "dora-rows-xs": ("M_xs", "magnitude"),
    "dora-cols-xs": ("M_xs", "magnitude"),
    "bora-xs": ("M_xs", "magnitude_r", "magnitude_c"),
}

# LoRA key prefix -> the model part it adapts. ``model.`` is the official DiTWrapper's attribute that
# holds the DiT; ``conditioners.`` the MultiConditioner's dict of conditioners. Our DiT and
# Conditioners modules are those sub-modules, so the rest of the key is our module path.
DEFAULT_ROOTS: Mapping[str, str] = {"dit": "model.", "conditioner": "conditioners."}

# The target whose LoRAs the per-step gating switches (the official code never gates the conditioner).
GATED_TARGET = "dit"

_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_KEY = re.compile(r"^(?P<module>.+)\.parametrizations\.weight\.(?P<index>\d+)\.(?P<tensor>[A-Za-z_]+)$")
_NORM_EPS = 1e-12  # added to row/column norms, as the official code does

MAX_MERGED_WEIGHT = torch.finfo(torch.float16).max
"""The largest magnitude a weight may have after LoRAs are merged: float16's range, the dtype the official
code runs SA3 in on CUDA. A merged weight beyond it cannot work there, and is garbage on any device (trained
weights are of order 1); a LoRA with an absurd alpha or strength gets here."""


class LoRAError(ValueError):
    """A LoRA file or a LoRA request that cannot be applied. Raised before any weight changes."""


# ---------------------------------------------------------------------------------------------------
# Adapters and their math
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Adapter:
    """One module's adapter from one LoRA file: fp32 tensors, shapes as in the file (2-D view of W)."""

    adapter_type: str
    rank: int
    scaling: float  # alpha / rank
    lora_A: Tensor | None = None  # [rank, fan_in]
    lora_B: Tensor | None = None  # [fan_out, rank]
    M_xs: Tensor | None = None  # [rank, rank]
    magnitude: Tensor | None = None  # [fan_out] (rows) or [fan_in] (cols)
    magnitude_r: Tensor | None = None  # [fan_out]
    magnitude_c: Tensor | None = None  # [fan_in]
    U: Tensor | None = None  # [fan_out, rank] -XS basis, computed from the base weight, never stored
    V: Tensor | None = None  # [fan_in, rank]

    @property
    def is_xs(self) -> bool:
        return self.adapter_type.endswith("-xs")

    @property
    def normalizes(self) -> bool:
        """DoRA/BoRA types: not additive, so their strength response depends on ``dora_mode``."""
        return self.adapter_type not in ("lora", "lora-xs")

    def tensors(self) -> dict[str, Tensor]:
        names = _TENSORS[self.adapter_type] + (("U", "V") if self.is_xs else ())
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to(self, device: torch.device | str | None) -> "Adapter":
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def with_xs_bases(self, base_weight: Tensor) -> "Adapter":
        """The -XS bases from the SVD of the base weight (a no-op for other types or when present)."""
        if not self.is_xs or self.U is not None:
            return self
        U, V = xs_bases(base_weight, self.rank)
        return replace(self, U=U, V=V)

    def check_fits(self, weight_shape: torch.Size, module: str) -> None:
        """Raise if this adapter's tensors do not fit a weight of ``weight_shape``."""
        if len(weight_shape) not in (2, 3):
            raise LoRAError(f"{module}: LoRA targets Linear and Conv1d weights, this weight has shape {tuple(weight_shape)}")
        fan_out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
        r = self.rank
        expected = {
            "lora_A": (r, fan_in),
            "lora_B": (fan_out, r),
            "M_xs": (r, r),
            "magnitude": (fan_in,) if self.adapter_type.startswith("dora-cols") else (fan_out,),
            "magnitude_r": (fan_out,),
            "magnitude_c": (fan_in,),
        }
        if self.is_xs and r > min(fan_out, fan_in):
            raise LoRAError(f"{module}: -XS rank {r} exceeds the weight's rank limit {min(fan_out, fan_in)}")
        for name, tensor in self.tensors().items():
            if name in expected and tuple(tensor.shape) != expected[name]:
                raise LoRAError(
                    f"{module}: LoRA tensor {name} has shape {tuple(tensor.shape)}, the model's weight "
                    f"{tuple(weight_shape)} needs {expected[name]} (a LoRA made for another model variant?)"
                )


def xs_bases(base_weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """-XS bases (U [fan_out, rank], V [fan_in, rank]) of a base weight, on its device, fp32.

    Deterministic: fp32 SVD on the CPU, then each U column (and the matching V row) is flipped so that
    the U column's largest-magnitude element is positive.
    """
    matrix = base_weight.detach().reshape(base_weight.shape[0], -1).cpu().float()
    U, _, Vh = torch.linalg.svd(matrix, full_matrices=False)
    columns = torch.arange(U.shape[1])
    signs = U[U.abs().argmax(dim=0), columns].sign()
    signs[signs == 0] = 1
    U, Vh = U * signs.unsqueeze(0), Vh * signs.unsqueeze(1)
    device = base_weight.device
    return U[:, :rank].contiguous().to(device), Vh[:rank, :].T.contiguous().to(device)


def _low_rank_update(adapter: Adapter) -> Tensor:
    """The fp32 low-rank delta (fan_out, fan_in), before scaling."""
    if adapter.is_xs:
        if adapter.U is None or adapter.V is None:
            raise LoRAError("an -XS adapter needs its SVD bases: call Adapter.with_xs_bases(base_weight) first")
        return adapter.U @ adapter.M_xs.to(adapter.U.dtype) @ adapter.V.T
    return torch.matmul(adapter.lora_B, adapter.lora_A)


def _coefficient(adapter: Adapter, strength: float, device: torch.device) -> Tensor:
    # The official code multiplies alpha/rank by a float32 strength buffer; doing the same keeps the
    # rounding identical to it.
    return adapter.scaling * torch.tensor(float(strength), dtype=torch.float32, device=device)


def _normalized_weight(weight: Tensor, adapter: Adapter, strength: float) -> Tensor:
    """The official DoRA/BoRA weight at ``strength``, as an fp32 2-D matrix (not yet cast back)."""
    update = _low_rank_update(adapter)
    w2d = weight.reshape(weight.shape[0], -1).to(update.dtype)
    v = w2d + _coefficient(adapter, strength, update.device) * update
    kind = adapter.adapter_type.removesuffix("-xs")
    if kind == "bora":
        rows = v / (v.norm(dim=1, keepdim=True) + _NORM_EPS)
        scaled = adapter.magnitude_r.unsqueeze(1) * rows
        columns = scaled / (scaled.norm(dim=0, keepdim=True) + _NORM_EPS)
        return columns * adapter.magnitude_c.unsqueeze(0)
    dim = 1 if kind == "dora-rows" else 0  # rows: one norm per output row; cols: one per input column
    direction = v / (v.norm(dim=dim, keepdim=True) + _NORM_EPS)
    return direction * adapter.magnitude.unsqueeze(dim)


def apply_adapter(weight: Tensor, adapter: Adapter, strength: float, *, dora_mode: str = "linear") -> Tensor:
    """One adapter applied to ``weight`` (the base weight or the previous adapter's output).

    Returns ``weight`` itself at strength 0 (exactly the official result for the normalising types,
    and equal in value to the official ``W + 0`` for the additive ones).
    """
    if dora_mode not in DORA_MODES:
        raise LoRAError(f"unknown dora_mode {dora_mode!r} (expected one of {', '.join(DORA_MODES)})")
    if strength == 0:
        return weight
    adapter = adapter.to(weight.device)
    with torch.no_grad():
        if not adapter.normalizes:
            update = _coefficient(adapter, strength, weight.device) * _low_rank_update(adapter)
            return weight + update.view(weight.shape).to(weight.dtype)
        if dora_mode == "official":
            merged = _normalized_weight(weight, adapter, strength)
        else:
            full = _normalized_weight(weight, adapter, 1.0)
            # lerp is exact at both ends: 0 -> W, 1 -> the official strength-1 weight.
            merged = torch.lerp(weight.reshape(full.shape).to(full.dtype), full, float(strength))
        return merged.view(weight.shape).to(weight.dtype)


def effective_weight(
    base_weight: Tensor,
    adapters: Sequence[Adapter],
    strengths: Sequence[float],
    *,
    dora_mode: str = "linear",
    name: str = "weight",
) -> Tensor:
    """The weight after a stack of adapters, applied in order: p_N(...p_1(p_0(W))).

    -XS adapters without bases get them from ``base_weight`` (as the official code: always the base,
    never the previous adapter's output). Returns ``base_weight`` itself when every strength is 0.
    Raises :class:`LoRAError` (naming ``name``: the weight and its LoRAs) when the result is NaN or outside
    :data:`MAX_MERGED_WEIGHT`, e.g. from a huge alpha or strength.
    """
    if len(adapters) != len(strengths):
        raise LoRAError(f"{len(adapters)} adapters but {len(strengths)} strengths")
    weight = base_weight
    for adapter, strength in zip(adapters, strengths):
        weight = apply_adapter(weight, adapter.with_xs_bases(base_weight), strength, dora_mode=dora_mode)
    if weight is not base_weight and not weight.abs().amax() <= MAX_MERGED_WEIGHT:  # False for NaN too
        scalings = ", ".join(f"{a.scaling:g}" for a in adapters)
        raise LoRAError(f"{name}: the LoRA makes this weight NaN or larger than {MAX_MERGED_WEIGHT:g} (alpha/rank "
                        f"{scalings}, strength {', '.join(f'{s:g}' for s in strengths)}); the LoRA file is broken "
                        "or the strength far too large")
    return weight


def validate_strength(strength: object) -> float:
    """A LoRA strength: any finite number (0 disables, above 1 amplifies, negative subtracts)."""
    return finite_number(strength, "strength", LoRAError)


# ---------------------------------------------------------------------------------------------------
# Module-name filters (official include/exclude metadata and the gating layer filter)
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


def _layer_filter_patterns(layer_filter: str) -> list[str]:
    """The gating layer filter: comma-separated, lower-cased substrings (official ``filter_lora_layers``)."""
    return [p.lower().strip() for p in (layer_filter or "").strip().split(",") if p]


# ---------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAConfig:
    """The ``lora_config`` metadata, with the official defaults filled in."""

    rank: int
    alpha: float
    adapter_type: str
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    dropout: float = 0.0  # training only

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


def lora_key_to_module(key: str, roots: Mapping[str, str] = DEFAULT_ROOTS) -> tuple[str, str, str]:
    """``model.transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0.lora_A`` ->
    ``("dit", "transformer.layers.0.self_attn.to_qkv", "lora_A")``.

    The module's weight parameter is ``<module path>.weight`` in the target's state dict.
    """
    match = _KEY.match(key)
    if match is None:
        raise LoRAError(f"{key!r} is not a LoRA tensor key (expected '<module>.parametrizations.weight.0.<tensor>')")
    target, path = module_name_to_target(match["module"], roots)
    return target, path, match["tensor"]


def module_name_to_target(module_name: str, roots: Mapping[str, str] = DEFAULT_ROOTS) -> tuple[str, str]:
    """A module name from a LoRA file -> (target, module path inside that target)."""
    for target, prefix in roots.items():
        if module_name.startswith(prefix):
            return target, module_name[len(prefix):]
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
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoRAError(f"{path}: lora_config metadata is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise LoRAError(f"{path}: lora_config metadata must be a JSON object, got {type(config).__name__}")
    return config


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
        raise LoRAError(f"{path}: unknown adapter_type {raw!r} (supported: {', '.join(ADAPTER_TYPES)}, and legacy 'dora')")
    return raw


def _number(config: Mapping, key: str, default: float | None, path: Path) -> float | None:
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LoRAError(f"{path}: lora_config.{key} must be a finite number, got {value!r}")
    return value


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
            raise LoRAError(f"{path}: {key!r} is not an SA3 LoRA tensor (expected '<module>.parametrizations.weight.0.<tensor>')")
        if match["index"] != "0":
            raise LoRAError(f"{path}: {key!r} uses parametrization index {match['index']}; LoRA files use index 0")
        if not tensor.is_floating_point():
            raise LoRAError(f"{path}: {key!r} has dtype {tensor.dtype}, expected a floating point tensor")
        if not torch.isfinite(tensor).all():
            raise LoRAError(f"{path}: {key!r} holds NaN or infinite values; the LoRA file is broken")
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
        dropout=float(_number(config, "dropout", 0.0, path)),
    )

    adapters = {}
    expected = set(_TENSORS[adapter_type])
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


# ---------------------------------------------------------------------------------------------------
# Per-step gating (official ``lora_configs`` passed to generate)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAGate:
    """Enable LoRA ``lora_index`` (None: every LoRA, the legacy form) only while lo <= t <= hi, and
    then not on DiT modules whose path matches ``layer_filter`` (comma-separated substrings)."""

    lora_index: int | None = None
    interval: tuple[float, float] = (0.0, 1.0)
    layer_filter: str = ""


_GATE_KEYS = ("lora_index", "interval", "layer_filter")


def gates_from_configs(lora_configs: Sequence[Mapping[str, object]]) -> list[LoRAGate]:
    """The official ``generate(lora_configs=[{"lora_index": i, "interval": (lo, hi), "layer_filter": "..."}])``
    entries as gates (``interval`` defaults to (0, 1), ``layer_filter`` to none, as official)."""
    if isinstance(lora_configs, (Mapping, str, bytes)):
        raise LoRAError("lora_configs must be a list of {'lora_index': ..., 'interval': ..., 'layer_filter': ...} dicts")
    gates = []
    for i, entry in enumerate(lora_configs):
        if not isinstance(entry, Mapping) or "lora_index" not in entry or set(entry) - set(_GATE_KEYS):
            raise LoRAError(f"lora_configs[{i}]: expected a dict with 'lora_index' and optionally 'interval', "
                            f"'layer_filter', got {entry!r}")
        index, interval = entry["lora_index"], entry.get("interval", (0.0, 1.0))
        layer_filter = entry.get("layer_filter") or ""  # None is no filter, as official
        if isinstance(index, bool) or not isinstance(index, int):
            raise LoRAError(f"lora_configs[{i}]: lora_index must be an integer, got {index!r}")
        if not (isinstance(interval, (tuple, list)) and len(interval) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in interval)):
            raise LoRAError(f"lora_configs[{i}]: interval must be two numbers (low, high), got {interval!r}")
        if not isinstance(layer_filter, str):
            raise LoRAError(f"lora_configs[{i}]: layer_filter must be a string, got {layer_filter!r}")
        gates.append(LoRAGate(index, (float(interval[0]), float(interval[1])), layer_filter))
    return gates


def _t_in_interval(t: float | Tensor, interval: tuple[float, float]) -> bool:
    # The official comparison is between python floats and a float32 tensor, i.e. in float32.
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[0]
    return bool(interval[0] <= t) and bool(t <= interval[1])


# ---------------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One adapted weight: its module, the original Parameter, and the adapters in stack order."""

    target: str
    path: str
    module: nn.Module
    original: Tensor
    adapters: list[tuple[int, Adapter]] = field(default_factory=list)
    current: Tensor | None = None  # what the stack last put in the module (None: the original)

    @property
    def param_name(self) -> str:
        return f"{self.path}.weight"


class LoRAStack:
    """Several LoRAs applied to named model parts, in order, with per-LoRA and per-target strengths.

    ``targets`` maps a target name to its module, e.g. ``{"dit": dit, "conditioner": conditioners}``;
    ``roots`` maps the same names to the key prefix their tensors have in LoRA files.
    """

    def __init__(
        self,
        targets: Mapping[str, nn.Module],
        *,
        roots: Mapping[str, str] = DEFAULT_ROOTS,
        dora_mode: str = "linear",
        apply_to_model: bool = True,
    ):
        unknown = set(targets) - set(roots)
        if unknown:
            raise LoRAError(f"targets {sorted(unknown)} have no LoRA key root (roots: {dict(roots)})")
        _check_dora_mode(dora_mode)
        self.targets = dict(targets)
        self.roots = {name: prefix for name, prefix in roots.items()}
        self.apply_to_model = apply_to_model
        self._dora_mode = dora_mode
        self._files: list[LoRAFile] = []
        self._strengths: list[dict[str, float]] = []
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._disabled: set[tuple[int, str, str]] = set()  # (lora index, target, path) switched off by gating

    # -- inspection ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    @property
    def files(self) -> tuple[LoRAFile, ...]:
        return tuple(self._files)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self._files]

    @property
    def dora_mode(self) -> str:
        return self._dora_mode

    def strength(self, lora_index: int, target: str) -> float:
        self._check_index(lora_index)
        self._check_target(target)
        return self._strengths[lora_index][target]

    def adapted_parameters(self, target: str | None = None) -> list[str]:
        """Parameter names (``<module path>.weight``) the stack adapts, in ``target`` or everywhere."""
        return [s.param_name for s in self._slots.values() if target is None or s.target == target]

    # -- loading ------------------------------------------------------------------------------------

    def load(self, files: Sequence[str | Path | LoRAFile], *, svd_bases_path: str | None = None) -> list[str]:
        """Append LoRAs to the stack (strength 1 each); returns their names. All-or-nothing."""
        parsed = [f if isinstance(f, LoRAFile) else read_lora_file(f, self.roots) for f in files]
        if svd_bases_path is not None and any(f.config.adapter_type.endswith("-xs") for f in parsed):
            raise LoRAError(
                f"svd_bases_path {svd_bases_path!r}: precomputed -XS bases are torch pickles in the official "
                "code and are not supported; remove the key to compute the bases from the base weights"
            )
        self._check_untouched(self._slots.values())
        new_slots: dict[tuple[str, str], _Slot] = {}
        additions: list[tuple[_Slot, int, Adapter]] = []
        for offset, lora in enumerate(parsed):
            index = len(self._files) + offset
            unmatched = []
            for module_name, adapter in lora.adapters.items():
                target, path = module_name_to_target(module_name, self.roots)
                slot = self._slots.get((target, path)) or new_slots.get((target, path))
                if slot is None:
                    slot = self._new_slot(target, path, lora, unmatched)
                    if slot is None:
                        continue
                    new_slots[(target, path)] = slot
                adapter.check_fits(slot.original.shape, f"{lora.path}: {module_name}")
                additions.append((slot, index, adapter))
            if unmatched:
                shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
                raise LoRAError(
                    f"{lora.path}: {len(unmatched)} LoRA module(s) match no Linear/Conv1d weight of the model "
                    f"({shown}); was this LoRA made for another model variant?"
                )
        # Everything checked: attach (the -XS SVDs run here, still without touching the model).
        prepared = [(slot, index, adapter.to(slot.original.device).with_xs_bases(slot.original))
                    for slot, index, adapter in additions]
        affected = list({id(slot): slot for slot, _, _ in prepared}.values())
        with self._all_or_nothing(affected):  # the merged weights are checked finite while applied
            self._slots.update(new_slots)
            for slot, index, adapter in prepared:
                slot.adapters.append((index, adapter))
            for lora in parsed:
                self._files.append(lora)
                self._strengths.append({target: 1.0 for target in self.targets})
            self._refresh(affected)
        return [lora.name for lora in parsed]

    def _new_slot(self, target: str, path: str, lora: LoRAFile, unmatched: list[str]) -> _Slot | None:
        root = self.targets.get(target)
        if root is None:
            raise LoRAError(f"{lora.path}: holds {target} tensors ({self.roots[target]}...) but no {target} module was given")
        try:
            module = root.get_submodule(path)
        except AttributeError:
            unmatched.append(f"{self.roots[target]}{path}")
            return None
        weight = module._parameters.get("weight")
        if weight is None:
            unmatched.append(f"{self.roots[target]}{path}")
            return None
        if weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            # A merged LoRA weight rounded back to float8 would lose most of the LoRA's change.
            raise LoRAError(f"{lora.path}: {self.roots[target]}{path} stores its weight in {weight.dtype}; "
                            "LoRAs need the model loaded without float8 weight storage")
        return _Slot(target, path, module, weight)

    # -- strength, mode, gating ---------------------------------------------------------------------

    def set_strength(self, strength: float, lora_index: int | None = None, target: str | None = None) -> None:
        """Set the strength of every LoRA (index None) or one, on both targets (None) or one.

        0 disables a LoRA without unloading it; > 1 amplifies; negative values subtract.
        """
        strength = validate_strength(strength)
        if lora_index is not None:
            self._check_index(lora_index)
        if target is not None:
            self._check_target(target)
        indices = range(len(self._files)) if lora_index is None else [lora_index]
        targets = list(self.targets) if target is None else [target]
        affected = [s for s in self._slots.values() if s.target in targets and any(i in indices for i, _ in s.adapters)]
        self._check_untouched(affected)
        with self._all_or_nothing(affected):
            for i in indices:
                for t in targets:
                    self._strengths[i][t] = strength
            self._refresh(affected)

    def set_dora_mode(self, dora_mode: str) -> None:
        """Switch the strength response of DoRA/BoRA adapters ("linear" or "official")."""
        _check_dora_mode(dora_mode)
        affected = [s for s in self._slots.values() if any(a.normalizes for _, a in s.adapters)]
        self._check_untouched(affected)
        with self._all_or_nothing(affected):
            self._dora_mode = dora_mode
            self._refresh(affected)

    def gate(self, t: float | Tensor, gates: Sequence[LoRAGate]) -> bool:
        """Per-step gating of the DiT's LoRAs at diffusion time ``t`` (call before each DiT forward).

        Gates are applied in order (a later gate for the same LoRA wins). LoRAs that no gate names are
        enabled. Only modules whose state changes are recomputed. Returns whether any weight changed.
        """
        self.check_gates(gates)
        disabled: set[tuple[int, str, str]] = set()
        gated = [s for s in self._slots.values() if s.target == GATED_TARGET]
        for g in gates:
            indices = range(len(self._files)) if g.lora_index is None else [g.lora_index]
            active = _t_in_interval(t, g.interval)
            patterns = _layer_filter_patterns(g.layer_filter)
            for slot in gated:
                for i, _ in slot.adapters:
                    if i not in indices:
                        continue
                    key = (i, slot.target, slot.path)
                    if active and not matches_any(slot.path, patterns):
                        disabled.discard(key)
                    else:
                        disabled.add(key)
        return self._set_disabled(disabled)

    def check_gates(self, gates: Sequence[LoRAGate]) -> None:
        """Raise if a gate names a LoRA that is not loaded or has no (low, high) interval."""
        for g in gates:
            if g.lora_index is not None:
                self._check_index(g.lora_index)
            if len(g.interval) != 2:
                raise LoRAError(f"LoRA gate interval must be (low, high), got {g.interval!r}")

    def clear_gates(self) -> None:
        """Enable every LoRA on every module again (after a gated generation)."""
        self._set_disabled(set())

    def _set_disabled(self, disabled: set[tuple[int, str, str]]) -> bool:
        changed = disabled ^ self._disabled
        affected = [s for s in self._slots.values() if any((i, s.target, s.path) in changed for i, _ in s.adapters)]
        self._check_untouched(affected)
        with self._all_or_nothing(affected):
            self._disabled = disabled
            self._refresh(affected)
        return bool(affected)

    # -- effective weights and unloading ------------------------------------------------------------

    def _slot_weight(self, slot: _Slot) -> Tensor:
        adapters, strengths = [], []
        for i, adapter in slot.adapters:
            adapters.append(adapter)
            enabled = (i, slot.target, slot.path) not in self._disabled
            strengths.append(self._strengths[i][slot.target] if enabled else 0.0)
        loras = ", ".join(self._files[i].name for i, _ in slot.adapters)
        return effective_weight(slot.original, adapters, strengths, dora_mode=self._dora_mode,
                                name=f"{slot.target} {slot.param_name} (LoRA {loras})")

    def effective_weights(self, target: str | None = None) -> dict[tuple[str, str], Tensor]:
        """{(target, parameter name): effective weight} for every adapted weight, at the current
        strengths and gating; the original tensor itself where the LoRAs have no effect."""
        if target is not None:
            self._check_target(target)
        return {(s.target, s.param_name): self._slot_weight(s)
                for s in self._slots.values() if target is None or s.target == target}

    def unload(self) -> None:
        """Remove every LoRA and put the original weight Parameters back (bit-for-bit restore)."""
        slots = list(self._slots.values())
        self._check_untouched(slots)
        if self.apply_to_model:
            for slot in slots:
                slot.module._parameters["weight"] = slot.original
        self._files.clear()
        self._strengths.clear()
        self._slots.clear()
        self._disabled.clear()

    @contextmanager
    def _all_or_nothing(self, slots: list[_Slot]) -> Iterator[None]:
        """Undo every change the block made when it raises a LoRAError (a merged weight that is not finite):
        the stack's state comes back, and so do the weights of ``slots`` (the ones the block may touch)."""
        files, strengths = list(self._files), [dict(s) for s in self._strengths]
        dora_mode, disabled, known = self._dora_mode, set(self._disabled), dict(self._slots)
        adapters = {id(slot): list(slot.adapters) for slot in slots}
        try:
            yield
        except LoRAError:
            self._files, self._strengths, self._dora_mode = files, strengths, dora_mode
            self._disabled, self._slots = disabled, known
            for slot in slots:
                slot.adapters = adapters[id(slot)]
            self._refresh(slots)  # the weights of the restored state, which were finite
            raise

    def _refresh(self, slots: Iterable[_Slot]) -> None:
        if not self.apply_to_model:
            return
        for slot in slots:
            weight = self._slot_weight(slot)
            if weight is slot.original:
                slot.current = None
                slot.module._parameters["weight"] = slot.original
            else:
                slot.current = nn.Parameter(weight, requires_grad=False)
                slot.module._parameters["weight"] = slot.current

    # -- checks ---------------------------------------------------------------------------------------

    def _check_untouched(self, slots: Iterable[_Slot]) -> None:
        """Raise if a module's weight is no longer the one the stack put there."""
        if not self.apply_to_model:
            return
        for slot in slots:
            expected = slot.original if slot.current is None else slot.current
            actual = slot.module._parameters.get("weight")
            if actual is not expected or actual.device != slot.original.device or actual.dtype != slot.original.dtype:
                raise LoRAError(
                    f"{slot.target} weight {slot.param_name} was replaced, moved or cast outside the LoRA stack; "
                    "unload LoRAs before moving or reloading the model"
                )

    def _check_index(self, lora_index: int) -> None:
        if isinstance(lora_index, bool) or not isinstance(lora_index, int) or not 0 <= lora_index < len(self._files):
            raise LoRAError(f"lora_index {lora_index!r} is out of range: {len(self._files)} LoRA(s) loaded")

    def _check_target(self, target: str) -> None:
        if target not in self.targets:
            raise LoRAError(f"unknown LoRA target {target!r} (expected one of {', '.join(map(repr, self.targets))})")


def _check_dora_mode(dora_mode: str) -> None:
    if dora_mode not in DORA_MODES:
        raise LoRAError(f"unknown dora_mode {dora_mode!r} (expected one of {', '.join(DORA_MODES)})")
