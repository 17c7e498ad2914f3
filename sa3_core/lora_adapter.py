"""One module's LoRA adapter (the tensors an official SA3 LoRA file holds for it) and its math.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

ADAPTER_TYPES = ("lora", "dora-rows", "dora-cols", "bora", "lora-xs", "dora-rows-xs", "dora-cols-xs", "bora-xs")
DORA_MODES = ("linear", "official")

# Which tensors a file holds for each adapter type (the official ``name_is_lora`` names).
ADAPTER_TENSORS = {
    "lora": ("lora_A", "lora_B"),
    "dora-rows": ("lora_A", "lora_B", "magnitude"),
    "dora-cols": ("lora_A", "lora_B", "magnitude"),
    "bora": ("lora_A", "lora_B", "magnitude_r", "magnitude_c"),
    "lora-xs": ("M_xs",),
    "dora-rows-xs": ("M_xs", "magnitude"),
    "dora-cols-xs": ("M_xs", "magnitude"),
    "bora-xs": ("M_xs", "magnitude_r", "magnitude_c"),
}

_NORM_EPS = 1e-12  # added to row/column norms, as the official code does

MAX_MERGED_WEIGHT = torch.finfo(torch.float16).max
"""The largest magnitude a weight may have after LoRAs are merged: float16's range, the dtype the official
code runs SA3 in on CUDA. A merged weight beyond it cannot work there, and is garbage on any device (trained
weights are of order 1); a LoRA with an absurd alpha or strength gets here."""


class LoRAError(ValueError):
    """A LoRA file or a LoRA request that cannot be applied. Raised before any weight changes."""


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
        names = ADAPTER_TENSORS[self.adapter_type] + (("U", "V") if self.is_xs else ())
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to(self, device: torch.device | str | None) -> Adapter:
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def with_xs_bases(self, base_weight: Tensor) -> Adapter:
        """The -XS bases from the SVD of the base weight (a no-op for other types or when present)."""
        if not self.is_xs or self.U is not None:
            return self
        U, V = xs_bases(base_weight, self.rank)
        return replace(self, U=U, V=V)

    def check_fits(self, weight_shape: torch.Size, module: str) -> None:
        """Raise if this adapter's tensors do not fit a weight of ``weight_shape``."""
        if len(weight_shape) not in (2, 3):
            raise LoRAError(
                f"{module}: LoRA targets Linear and Conv1d weights, this weight has shape {tuple(weight_shape)}"
            )
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
    check_dora_mode(dora_mode)
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
        raise LoRAError(
            f"{name}: the LoRA makes this weight NaN or larger than {MAX_MERGED_WEIGHT:g} (alpha/rank "
            f"{scalings}, strength {', '.join(f'{s:g}' for s in strengths)}); the LoRA file is broken "
            "or the strength far too large"
        )
    return weight


def check_dora_mode(dora_mode: str) -> None:
    if dora_mode not in DORA_MODES:
        raise LoRAError(f"unknown dora_mode {dora_mode!r} (expected one of {', '.join(DORA_MODES)})")
