"""Plain-torch stand-ins for the layers of the newest ComfyUI's ``comfy.ops`` (dynamic VRAM), for tests.

Mirrors ``comfy/ops.py`` of Comfy-Org/ComfyUI at commit 0271a469fe29 (0.38.x, read through the search index;
the layers took this form when dynamic VRAM, "comfy-aimdo", became the default on NVIDIA with torch >= 2.8).
With aimdo enabled, ``disable_weight_init.Linear``:

- ``__init__`` skips ``torch.nn.Linear.__init__``: only ``in_features`` / ``out_features`` are set,
  ``weight = None`` and ``bias = None`` (plain attributes, no parameters, nothing allocated),
  ``comfy_need_lazy_init_bias = bias``, ``weight_comfy_model_dtype = bias_comfy_model_dtype = dtype``. The
  ``device`` argument is ignored. So ``state_dict()`` holds none of its tensors before loading.
- ``_load_from_state_dict`` (``_lazy_load_from_state_dict``) takes every key under its prefix: ``weight``
  and ``bias`` become ``Parameter(v, requires_grad=False)`` - ``v`` itself under
  ``load_state_dict(assign=True)``, a clone otherwise - in the tensor's own dtype and device (no
  conversion, no shape check); any other key is reported unexpected; a weight (or wanted bias) the
  state dict lacks becomes zeros and is reported missing.
- ``forward``: when ``comfy_cast_weights`` is set (``manual_cast``, or the ModelPatcher setting it) or a
  ``weight_function`` / ``bias_function`` is present, weight and bias are cast to the input's device and
  dtype, the functions applied, then ``F.linear``; otherwise the plain ``torch.nn.Linear.forward``.
  (Upstream also checks for interruption in every op and streams weights through the aimdo allocator;
  neither changes values, both need the host, so they are left out.)

Upstream ``Conv1d`` stays an eager ``torch.nn.Conv1d`` (``reset_parameters`` a no-op). Here ``LAZY`` makes
Conv1d lazy the same way as Linear: a stricter host than any released one, so a loader that works with it
does not depend on which layer types ComfyUI makes lazy next. ``EAGER`` is the legacy form (ComfyUI
before dynamic VRAM, or with it off): torch layers whose ``reset_parameters`` does nothing.

Usable without ComfyUI (tests/core) and by a custom node that swaps these classes into ``comfy.ops`` to
emulate the newer host inside an older one (tests/e2e).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CastWeightBiasOp:
    """The attributes ComfyUI's ModelPatcher reads and sets on every comfy op."""

    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []

    def _casts(self) -> bool:
        return self.comfy_cast_weights or len(self.weight_function) > 0 or len(self.bias_function) > 0

    def cast_bias_weight(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``comfy.ops.cast_bias_weight``: to the input's device, then dtype, then the patch functions."""
        weight = self.weight.to(device=input.device)
        if self.weight_function or weight.dtype != input.dtype:
            weight = weight.to(dtype=input.dtype)
            for function in self.weight_function:
                weight = function(weight)
        bias = None
        if self.bias is not None:
            bias = self.bias.to(device=input.device, dtype=input.dtype)
            for function in self.bias_function:
                bias = function(bias)
        return weight, bias


def _lazy_load_from_state_dict(
    module: nn.Module,
    state_dict,
    prefix: str,
    local_metadata: dict,
    missing_keys: list,
    unexpected_keys: list,
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...],
) -> None:
    """``disable_weight_init._lazy_load_from_state_dict``: whatever tensor arrives becomes the parameter."""
    assign = local_metadata.get("assign_to_params_buffers", False)
    for key, value in state_dict.items():
        name = key[len(prefix) :]
        if name == "weight":
            module.weight = nn.Parameter(value if assign else value.clone(), requires_grad=False)
        elif name == "bias" and value is not None:
            module.bias = nn.Parameter(value if assign else value.clone(), requires_grad=False)
        else:
            unexpected_keys.append(key)
    if module.weight is None:
        module.weight = nn.Parameter(torch.zeros(weight_shape), requires_grad=False)
        missing_keys.append(prefix + "weight")
    if module.bias is None and module.comfy_need_lazy_init_bias:
        module.bias = nn.Parameter(torch.zeros(bias_shape), requires_grad=False)
        missing_keys.append(prefix + "bias")


class _LazyLinear(nn.Linear, CastWeightBiasOp):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        nn.Module.__init__(self)  # no torch.nn.Linear.__init__: nothing allocated, device ignored
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None
        self.comfy_need_lazy_init_bias = bias
        self.weight_comfy_model_dtype = dtype
        self.bias_comfy_model_dtype = dtype

    def reset_parameters(self) -> None:
        return None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        _lazy_load_from_state_dict(
            self,
            state_dict,
            prefix,
            local_metadata,
            missing_keys,
            unexpected_keys,
            (self.out_features, self.in_features),
            (self.out_features,),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._casts():
            return F.linear(input, *self.cast_bias_weight(input))
        return super().forward(input)


class _LazyConv1d(nn.Conv1d, CastWeightBiasOp):
    def __init__(self, *args, bias: bool = True, device=None, dtype=None, **kwargs):
        # The torch constructor on meta sets the conv attributes; its (meta) parameters are then dropped.
        super().__init__(*args, bias=bias, device="meta", dtype=dtype, **kwargs)
        del self.weight, self.bias
        self.weight = None
        self.bias = None
        self.comfy_need_lazy_init_bias = bias
        self.weight_comfy_model_dtype = dtype
        self.bias_comfy_model_dtype = dtype

    def reset_parameters(self) -> None:
        return None

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        _lazy_load_from_state_dict(
            self, state_dict, prefix, local_metadata, missing_keys, unexpected_keys, weight_shape, (self.out_channels,)
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._casts():
            return self._conv_forward(input, *self.cast_bias_weight(input))
        return super().forward(input)


class _EagerLinear(nn.Linear, CastWeightBiasOp):
    def reset_parameters(self) -> None:
        return None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._casts():
            return F.linear(input, *self.cast_bias_weight(input))
        return super().forward(input)


class _EagerConv1d(nn.Conv1d, CastWeightBiasOp):
    def reset_parameters(self) -> None:
        return None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._casts():
            return self._conv_forward(input, *self.cast_bias_weight(input))
        return super().forward(input)


class disable_weight_init:  # noqa: N801 - ComfyUI's names
    """Dynamic VRAM on: lazy Linear (as upstream) and lazy Conv1d (stricter than upstream)."""

    Linear = _LazyLinear
    Conv1d = _LazyConv1d


class manual_cast(disable_weight_init):  # noqa: N801
    """As :class:`disable_weight_init`, casting weights to the input dtype at every forward."""

    class Linear(_LazyLinear):
        comfy_cast_weights = True

    class Conv1d(_LazyConv1d):
        comfy_cast_weights = True


class legacy_disable_weight_init:  # noqa: N801
    """Dynamic VRAM off (and every ComfyUI before it): eager torch layers, no initialisation."""

    Linear = _EagerLinear
    Conv1d = _EagerConv1d


LAZY = manual_cast
EAGER = legacy_disable_weight_init
