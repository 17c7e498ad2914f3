"""A stack of SA3 LoRAs on a model: which adapters act on which weight, strengths, per-step gating, unloading.

Files are read by :mod:`.lora_file`; one module's adapter math is :mod:`.lora_adapter`.

Stacking
    LoRAs compose in load order, as the official parametrisation chain: W_eff = p_N(...p_1(p_0(W))).
    :func:`plan_lora_stack` matches a chain of files to a model's weights; ``LoRAStack`` (the Python API) and
    the ComfyUI nodes' weight patches both take their adapters and strengths from it.

Mechanism: merged weights, swapped by name
    The stack keeps each adapted module's original weight Parameter. Whenever strengths (or gating)
    change it computes the effective weight of the affected modules and puts it in the module as a new
    Parameter, so sampling runs the plain layers with no per-forward cost. ``unload()`` puts the
    original Parameter objects back, so the base weights are restored bit for bit (they are never
    written to). Nothing but the ``weight`` entry of each module is touched, so the same code works
    on plain ``torch.nn`` layers and on ``comfy.ops`` layers. Do not move or cast the model while LoRAs
    are applied: unload first, then load again.

Deliberate differences from the official loader (which loads with ``strict=False``)
    - Every file tensor must land on a module with a matching shape; otherwise we raise before any
      weight changes (the official loader ignores unknown keys silently).
    - Modules without tensors in the file are not touched. The official code also parametrises
      them, which is the identity for LoRA/-XS and the identity up to rounding for DoRA/BoRA.
    - Per-step gating (official ``lora_configs``): LoRAs that no gate names are enabled; the official
      code leaves them in whatever state the previous generation left them.
    - Separate strengths for the DiT and the conditioner (the official docs describe them; the
      official code applies one strength to both).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .lora_adapter import Adapter, LoRAError, check_dora_mode, effective_weight
from .lora_file import DEFAULT_ROOTS, LoRAFile, matches_any, module_name_to_target, read_lora_file
from .validation import finite_number

# The target whose LoRAs the per-step gating switches (the official code never gates the conditioner).
GATED_TARGET = "dit"

# A merged LoRA weight rounded back to float8 would lose most of the LoRA's change.
_FLOAT8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def validate_strength(strength: object) -> float:
    """A LoRA strength: any finite number (0 disables, above 1 amplifies, negative subtracts)."""
    return finite_number(strength, "strength", LoRAError)


# ---------------------------------------------------------------------------------------------------
# Planning: which adapters act on which weight
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedAdapter:
    """One LoRA of the chain acting on one weight, at the strength that LoRA has on the weight's target."""

    lora_index: int  # position in the chain
    lora_name: str  # for messages
    adapter: Adapter
    strength: float


WeightKey = tuple[str, str]
"""(target, module path): the ``weight`` of that module, e.g. ``("dit", "transformer.layers.0.self_attn.to_qkv")``."""


def adaptable_weights(part: nn.Module) -> dict[str, Tensor]:
    """{module path: weight Parameter} of every module of ``part`` with a ``weight`` (what a LoRA may adapt)."""
    return {
        name: module._parameters["weight"]
        for name, module in part.named_modules(remove_duplicate=False)
        if name and module._parameters.get("weight") is not None
    }


def plan_lora_stack(
    loras: Sequence[tuple[LoRAFile, Mapping[str, float]]],
    weights: Mapping[str, Mapping[str, Tensor]],
    roots: Mapping[str, str] = DEFAULT_ROOTS,
) -> dict[WeightKey, list[PlannedAdapter]]:
    """Match a chain of LoRA files to a model's weights: per adapted weight, its adapters in chain order.

    ``loras``: the files in chain order, each with its strength per target (``{"dit": 1.0, "conditioner": 0.5}``).
    ``weights``: per target, the model's weights by module path (:func:`adaptable_weights`); only their shapes and
    dtypes are read. Pure: nothing is changed. Raises :class:`LoRAError` naming the file when it holds tensors for
    a target ``weights`` lacks, a module matches no weight, its tensors do not fit the weight, or the weight is
    stored in float8.
    """
    plan: dict[WeightKey, list[PlannedAdapter]] = {}
    for index, (lora, strengths) in enumerate(loras):
        unmatched = []
        for module_name, adapter in lora.adapters.items():
            target, path = module_name_to_target(module_name, roots)
            if target not in weights:
                raise LoRAError(
                    f"{lora.path}: holds {target} tensors ({roots[target]}...) but no {target} module was given"
                )
            weight = weights[target].get(path)
            if weight is None:
                unmatched.append(module_name)
                continue
            if weight.dtype in _FLOAT8:
                raise LoRAError(
                    f"{lora.path}: {module_name} stores its weight in {weight.dtype}; LoRAs need the "
                    "model loaded without float8 weight storage"
                )
            adapter.check_fits(weight.shape, f"{lora.path}: {module_name}")
            plan.setdefault((target, path), []).append(PlannedAdapter(index, lora.name, adapter, strengths[target]))
        if unmatched:
            shown = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
            raise LoRAError(
                f"{lora.path}: {len(unmatched)} LoRA module(s) match no Linear/Conv1d weight of the model "
                f"({shown}); was this LoRA made for another model variant?"
            )
    return plan


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
        raise LoRAError(
            "lora_configs must be a list of {'lora_index': ..., 'interval': ..., 'layer_filter': ...} dicts"
        )
    gates = []
    for i, entry in enumerate(lora_configs):
        if not isinstance(entry, Mapping) or "lora_index" not in entry or set(entry) - set(_GATE_KEYS):
            raise LoRAError(
                f"lora_configs[{i}]: expected a dict with 'lora_index' and optionally 'interval', "
                f"'layer_filter', got {entry!r}"
            )
        index, interval = entry["lora_index"], entry.get("interval", (0.0, 1.0))
        layer_filter = entry.get("layer_filter") or ""  # None is no filter, as official
        if isinstance(index, bool) or not isinstance(index, int):
            raise LoRAError(f"lora_configs[{i}]: lora_index must be an integer, got {index!r}")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in interval)
        if not (isinstance(interval, (tuple, list)) and len(interval) == 2 and numbers):
            raise LoRAError(f"lora_configs[{i}]: interval must be two numbers (low, high), got {interval!r}")
        if not isinstance(layer_filter, str):
            raise LoRAError(f"lora_configs[{i}]: layer_filter must be a string, got {layer_filter!r}")
        gates.append(LoRAGate(index, (float(interval[0]), float(interval[1])), layer_filter))
    return gates


def _t_in_interval(t: float | Tensor, interval: tuple[float, float]) -> bool:
    # The official comparison is between python floats and a float32 tensor, i.e. in float32.
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[0]
    return bool(interval[0] <= t) and bool(t <= interval[1])


def _layer_filter_patterns(layer_filter: str) -> list[str]:
    """The gating layer filter: comma-separated, lower-cased substrings (official ``filter_lora_layers``)."""
    return [p.lower().strip() for p in (layer_filter or "").strip().split(",") if p]


# ---------------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One weight the stack adapts: its module, the original Parameter, and what the stack last put there."""

    module: nn.Module
    original: Tensor
    current: Tensor | None = None  # None: the original


class LoRAStack:
    """Several LoRAs applied to named model parts, in order, with per-LoRA and per-target strengths.

    ``targets`` maps a target name to its module, e.g. ``{"dit": dit, "conditioner": conditioners}``;
    ``roots`` maps the same names to the key prefix their tensors have in LoRA files.
    """

    def __init__(
        self, targets: Mapping[str, nn.Module], *, roots: Mapping[str, str] = DEFAULT_ROOTS, dora_mode: str = "linear"
    ):
        unknown = set(targets) - set(roots)
        if unknown:
            raise LoRAError(f"targets {sorted(unknown)} have no LoRA key root (roots: {dict(roots)})")
        check_dora_mode(dora_mode)
        self.targets = dict(targets)
        self.roots = dict(roots)
        self._dora_mode = dora_mode
        self._files: list[LoRAFile] = []
        self._strengths: list[dict[str, float]] = []
        self._plan: dict[WeightKey, list[PlannedAdapter]] = {}  # plan_lora_stack of the files and strengths
        self._slots: dict[WeightKey, _Slot] = {}
        # The plan's adapters moved to their weight's device, with their -XS bases: (lora index, *key) -> adapter.
        self._ready: dict[tuple[int, str, str], Adapter] = {}
        self._disabled: set[tuple[int, str, str]] = set()  # (lora index, *key) switched off by gating

    # -- inspection ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._files)

    def strength(self, lora_index: int, target: str) -> float:
        self._check_index(lora_index)
        self._check_target(target)
        return self._strengths[lora_index][target]

    def adapted_parameters(self, target: str | None = None) -> list[str]:
        """Parameter names (``<module path>.weight``) the stack adapts, in ``target`` or everywhere."""
        return [f"{path}.weight" for t, path in self._plan if target is None or t == target]

    # -- loading ------------------------------------------------------------------------------------

    def load(self, files: Sequence[str | Path | LoRAFile]) -> list[str]:
        """Append LoRAs to the stack (strength 1 each); returns their names. All-or-nothing."""
        parsed = [f if isinstance(f, LoRAFile) else read_lora_file(f, self.roots) for f in files]
        self._check_untouched(self._slots)
        first = len(self._files)
        files = self._files + parsed
        strengths = self._strengths + [{target: 1.0 for target in self.targets} for _ in parsed]
        plan = self._plan_of(files, strengths)  # raises before anything changes
        new = {key: layers for key, layers in plan.items() if any(a.lora_index >= first for a in layers)}
        slots = {key: self._slots.get(key) or self._new_slot(key) for key in new}
        # The -XS SVDs run here, still without touching the model.
        ready = {
            (a.lora_index, *key): a.adapter.to(slots[key].original.device).with_xs_bases(slots[key].original)
            for key, layers in new.items()
            for a in layers
            if a.lora_index >= first
        }
        with self._all_or_nothing(list(new)):  # the merged weights are checked finite while applied
            self._slots.update(slots)
            self._ready.update(ready)
            self._files, self._strengths, self._plan = files, strengths, plan
            self._refresh(list(new))
        return [lora.name for lora in parsed]

    def _plan_of(
        self, files: list[LoRAFile], strengths: list[dict[str, float]]
    ) -> dict[WeightKey, list[PlannedAdapter]]:
        weights = {target: adaptable_weights(module) for target, module in self.targets.items()}
        return plan_lora_stack(list(zip(files, strengths)), weights, self.roots)

    def _new_slot(self, key: WeightKey) -> _Slot:
        target, path = key
        module = self.targets[target].get_submodule(path)
        return _Slot(module, module._parameters["weight"])

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
        affected = [
            key
            for key, layers in self._plan.items()
            if key[0] in targets and any(a.lora_index in indices for a in layers)
        ]
        self._check_untouched(affected)
        with self._all_or_nothing(affected):
            for i in indices:
                for t in targets:
                    self._strengths[i][t] = strength
            self._plan = self._plan_of(self._files, self._strengths)
            self._refresh(affected)

    def set_dora_mode(self, dora_mode: str) -> None:
        """Switch the strength response of DoRA/BoRA adapters ("linear" or "official")."""
        check_dora_mode(dora_mode)
        affected = [key for key, layers in self._plan.items() if any(a.adapter.normalizes for a in layers)]
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
        gated = [(key, layers) for key, layers in self._plan.items() if key[0] == GATED_TARGET]
        for g in gates:
            indices = range(len(self._files)) if g.lora_index is None else [g.lora_index]
            active = _t_in_interval(t, g.interval)
            patterns = _layer_filter_patterns(g.layer_filter)
            for (target, path), layers in gated:
                for a in layers:
                    if a.lora_index not in indices:
                        continue
                    switch = (a.lora_index, target, path)
                    if active and not matches_any(path, patterns):
                        disabled.discard(switch)
                    else:
                        disabled.add(switch)
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
        affected = [key for key, layers in self._plan.items() if any((a.lora_index, *key) in changed for a in layers)]
        self._check_untouched(affected)
        with self._all_or_nothing(affected):
            self._disabled = disabled
            self._refresh(affected)
        return bool(affected)

    # -- effective weights and unloading ------------------------------------------------------------

    def _weight(self, key: WeightKey) -> Tensor:
        """The effective weight of ``key`` at the current strengths, mode and gating."""
        layers = self._plan.get(key, [])
        adapters = [self._ready[(a.lora_index, *key)] for a in layers]
        strengths = [0.0 if (a.lora_index, *key) in self._disabled else a.strength for a in layers]
        loras = ", ".join(a.lora_name for a in layers)
        target, path = key
        return effective_weight(
            self._slots[key].original,
            adapters,
            strengths,
            dora_mode=self._dora_mode,
            name=f"{target} {path}.weight (LoRA {loras})",
        )

    def unload(self) -> None:
        """Remove every LoRA and put the original weight Parameters back (bit-for-bit restore)."""
        self._check_untouched(self._slots)
        for slot in self._slots.values():
            slot.module._parameters["weight"] = slot.original
        self._files, self._strengths, self._plan = [], [], {}
        self._slots, self._ready, self._disabled = {}, {}, set()

    @contextmanager
    def _all_or_nothing(self, keys: list[WeightKey]) -> Iterator[None]:
        """Undo every change the block made when it raises a LoRAError (a merged weight that is not finite):
        the stack's state comes back, and so do the weights of ``keys`` (the ones the block may touch)."""
        state = (
            list(self._files),
            [dict(s) for s in self._strengths],
            self._plan,
            self._dora_mode,
            set(self._disabled),
            dict(self._slots),
            dict(self._ready),
        )
        try:
            yield
        except LoRAError:
            touched = {key: self._slots[key] for key in keys if key in self._slots}
            (self._files, self._strengths, self._plan, self._dora_mode, self._disabled, self._slots, self._ready) = (
                state
            )
            for key, slot in touched.items():  # the weights of the restored state, which were finite
                weight = self._weight(key) if key in self._slots else slot.original
                self._put(slot, weight)
            raise

    def _refresh(self, keys: Iterable[WeightKey]) -> None:
        for key in keys:
            self._put(self._slots[key], self._weight(key))

    @staticmethod
    def _put(slot: _Slot, weight: Tensor) -> None:
        if weight is slot.original:
            slot.current = None
            slot.module._parameters["weight"] = slot.original
        else:
            slot.current = nn.Parameter(weight, requires_grad=False)
            slot.module._parameters["weight"] = slot.current

    # -- checks ---------------------------------------------------------------------------------------

    def _check_untouched(self, keys: Iterable[WeightKey]) -> None:
        """Raise if a module's weight is no longer the one the stack put there."""
        for key in keys:
            slot = self._slots[key]
            expected = slot.original if slot.current is None else slot.current
            actual = slot.module._parameters.get("weight")
            if actual is not expected or actual.device != slot.original.device or actual.dtype != slot.original.dtype:
                target, path = key
                raise LoRAError(
                    f"{target} weight {path}.weight was replaced, moved or cast outside the LoRA stack; "
                    "unload LoRAs before moving or reloading the model"
                )

    def _check_index(self, lora_index: int) -> None:
        if isinstance(lora_index, bool) or not isinstance(lora_index, int) or not 0 <= lora_index < len(self._files):
            raise LoRAError(f"lora_index {lora_index!r} is out of range: {len(self._files)} LoRA(s) loaded")

    def _check_target(self, target: str) -> None:
        if target not in self.targets:
            raise LoRAError(f"unknown LoRA target {target!r} (expected one of {', '.join(map(repr, self.targets))})")
