"""Layers whose weights may live on another device or in another dtype than the computation.

Two jobs, one rule ("cast every parameter to the input's device and dtype where it is used"):

* **Weight storage.** ``Linear``, ``Conv1d`` and ``Embedding`` compute in the dtype of their input (or,
  for ``Embedding``, ``compute_dtype``) whatever dtype their weight is stored in, so the DiT and the text
  encoder can keep their big matrices in float8 (:func:`storing`) and compute in bf16/fp32, as
  ComfyUI's ``comfy.ops.manual_cast`` layers do.
* **Partial (low-VRAM) loading in ComfyUI.** ComfyUI's ``ModelPatcher`` moves a model to the GPU module
  by module. It only considers *leaf* modules (a module whose children hold parameters is skipped, its
  own parameters left behind), and it needs ``comfy_cast_weights`` on every module it may leave on the
  offload device (:class:`CastWeights`). So every parameter of the DiT, SAME and the conditioners lives
  in such a leaf module: the norms, the weight-normed convolutions and the learned tensors that the
  official code keeps directly on bigger modules (:class:`LearnedTensor`, stored under the official key);
  the text encoder's layers and norms are made casting ones in place (:func:`store_weights`).

Nothing here imports ComfyUI: the attributes are plain data that its model management reads and sets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Operations = Any  # a namespace with Linear / Conv1d classes: torch.nn, this module's OPS, or comfy.ops.*

FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class CastWeights:
    """Marks a module that casts each of its parameters to the input's device and dtype where it uses it.

    The attributes are ComfyUI's partial-loading protocol (``comfy.ops.CastWeightBiasOp``): its
    ``ModelPatcher`` sets ``comfy_cast_weights`` on a module it leaves on the offload device, and puts
    on-the-fly LoRA patches of the module's ``weight`` / ``bias`` entries into ``weight_function`` /
    ``bias_function`` (see :func:`cast_param`). Outside ComfyUI they stay as they are here.
    """

    comfy_cast_weights = False
    weight_function: list[Callable[[torch.Tensor], torch.Tensor]] = []
    bias_function: list[Callable[[torch.Tensor], torch.Tensor]] = []


def cast_param(
    module: nn.Module,
    name: str,
    like: torch.Tensor | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """``module.<name>`` on ``like``'s device and in its dtype (``device`` / ``dtype`` override), with
    ComfyUI's pending patches applied to a ``weight`` or ``bias`` entry. A no-op (the parameter itself)
    when nothing differs."""
    param = getattr(module, name)
    if param is None:
        return None
    device = device if device is not None else (like.device if like is not None else param.device)
    dtype = dtype if dtype is not None else (like.dtype if like is not None else param.dtype)
    functions = {"weight": module.weight_function, "bias": module.bias_function}.get(name, ())
    if functions:  # patch in the storage dtype's float upcast, then cast (as comfy.ops.cast_bias_weight)
        value = param.to(device=device, dtype=torch.float32 if param.dtype in FLOAT8_DTYPES else param.dtype, copy=True)
        for function in functions:
            value = function(value)
        return value.to(dtype)
    return param.to(device=device, dtype=dtype)


class Linear(nn.Linear, CastWeights):
    """``nn.Linear`` computing in its input's dtype on its input's device, whatever its weight's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_param(self, "weight", x), cast_param(self, "bias", x))


class Conv1d(nn.Conv1d, CastWeights):
    """``nn.Conv1d`` computing in its input's dtype on its input's device, whatever its weight's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_param(self, "weight", x), cast_param(self, "bias", x))


class Embedding(nn.Embedding, CastWeights):
    """``nn.Embedding`` whose rows come out in ``compute_dtype`` (None: the weight's dtype), on the
    device of the indices. Only the looked-up rows are cast, never the whole table."""

    compute_dtype: torch.dtype | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = cast_param(self, "weight", device=ids.device, dtype=self.weight.dtype)
        rows = F.embedding(
            ids, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        )
        return rows.to(self.compute_dtype or self.weight.dtype)


OPS = SimpleNamespace(Linear=Linear, Conv1d=Conv1d)
"""The operations namespace sa3_core builds with by default."""


def storing(operations: Operations, weight_dtype: torch.dtype) -> SimpleNamespace:
    """``operations`` whose Linear / Conv1d keep their weight matrix in ``weight_dtype`` (e.g. float8)
    while their bias stays in the dtype the layer is built with (the compute dtype).

    The layer classes of ``operations`` must cast weights at use: :data:`OPS` does, and so do ComfyUI's
    ``comfy.ops.manual_cast`` layers (plain ``torch.nn`` does not: its layers cannot multiply a float8
    weight with a float input).
    """

    def with_weight_dtype(base: type[nn.Module]) -> type[nn.Module]:
        class Layer(base):
            def __init__(self, *args: Any, device=None, dtype=None, **kwargs: Any):
                super().__init__(*args, device=device, dtype=weight_dtype, **kwargs)
                if getattr(self, "bias", None) is not None:
                    self.bias = nn.Parameter(torch.empty_like(self.bias, dtype=dtype), requires_grad=False)

        Layer.__name__ = Layer.__qualname__ = base.__name__
        return Layer

    return SimpleNamespace(Linear=with_weight_dtype(operations.Linear), Conv1d=with_weight_dtype(operations.Conv1d))


def store_weights(model: nn.Module, weight_dtype: torch.dtype | None = None) -> nn.Module:
    """Make ``model``'s plain ``nn.Linear`` / ``nn.Embedding`` layers (and transformers' T5Gemma norms) this
    module's casting layers, in place (the same parameter objects, the same results), and store the weight of
    every casting Linear, Conv1d and Embedding in ``weight_dtype`` when given, one matrix at a time. The model
    keeps computing in the dtype of its inputs and other parameters (embedding rows come out in the dtype the
    table had). Used for the transformers T5Gemma encoder, and for models built from ``OPS`` that already
    hold weights. Returns ``model``."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
        elif type(module) is nn.Embedding:
            module.__class__ = Embedding
        elif type(module).__name__ == "T5GemmaRMSNorm":  # by name: this module does not import transformers
            module.__class__ = _casting_class(type(module), GemmaRMSNorm)
        if isinstance(module, Embedding) and module.compute_dtype is None:
            module.compute_dtype = module.weight.dtype
        if isinstance(module, (Linear, Conv1d, Embedding)) and weight_dtype not in (None, module.weight.dtype):
            module.weight = nn.Parameter(module.weight.detach().to(weight_dtype), requires_grad=False)
    return model


class GemmaRMSNorm(CastWeights):
    """The forward of transformers' ``T5GemmaRMSNorm`` (``x / rms(x) * (1 + weight)``, in float32, cast back
    to the input's dtype) with its ``weight`` cast to the input's device at use, so ComfyUI may leave the
    norm offloaded in a partial load. Mixed into the transformers class by :func:`store_weights` (the module
    keeps its class, ``eps`` and parameter); the same operations in the same order, so the same bits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + cast_param(self, "weight", x32))).type_as(x)


@functools.cache
def _casting_class(base: type[nn.Module], casting: type) -> type[nn.Module]:
    """``base`` with ``casting``'s forward (one class per pair, so modules of one kind share it)."""
    return type(base.__name__, (casting, base), {"__qualname__": base.__qualname__})


class LearnedTensor(nn.Module, CastWeights):
    """One learned tensor (memory tokens, a per-block modulation bias, a resampler token) in a leaf module
    of its own, so ComfyUI can move it with a partial load. Attach it with :func:`attach_tensor` so its
    state-dict key stays the official ``<parent>.<name>``; calling it returns the tensor cast to ``like``.
    """

    def __init__(self, *shape: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        return cast_param(self, "weight", like)


def attach_tensor(parent: nn.Module, name: str, tensor: LearnedTensor) -> None:
    """Make ``tensor`` the submodule ``parent.<name>`` and keep the official checkpoint key: its parameter
    is saved as ``<prefix><name>`` (not ``<prefix><name>.weight``) and loaded from that key. The renaming
    keeps the key's position in the state dict."""
    parent.add_module(name, tensor)

    def save_flat(module, state_dict, prefix, local_metadata):
        nested = f"{prefix}{name}.weight"
        if nested in state_dict:
            items = [(f"{prefix}{name}" if key == nested else key, value) for key, value in state_dict.items()]
            state_dict.clear()
            state_dict.update(items)

    def load_flat(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        flat = f"{prefix}{name}"
        if flat in state_dict:
            state_dict[f"{flat}.weight"] = state_dict.pop(flat)

    parent.register_state_dict_post_hook(save_flat)
    parent.register_load_state_dict_pre_hook(load_flat)
