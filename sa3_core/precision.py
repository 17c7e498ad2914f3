"""Which dtype each part of an SA3 model runs in, per device.

The policy, and why:

- CPU: float32. x86 CPUs without AVX512-BF16/AMX (or AVX512-FP16) have no native half-precision GEMM;
  PyTorch converts element by element and is slower than float32 (measured: ``python -m bench.dtypes``,
  see bench/README.md). A requested bf16/fp16 is honoured but never chosen by default.
- CUDA: float16 by default for the DiT, SAME and the conditioners, as the official runtime
  (``StableAudioModel.from_pretrained(model_half=True)`` casts the whole model to fp16 on CUDA).
  bfloat16 is allowed on request.
- MPS: float32 by default, as the official code (it turns ``model_half`` off without CUDA). The SAME
  autoencoder is never run in bfloat16 on MPS, whatever is requested: in bf16 on Apple GPUs the SA3 VAE
  produces broadband noise (ComfyUI PR #15207; fp16 and fp32 are fine), so it falls back to float32 there
  while the DiT keeps the requested dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ComponentDtypes:
    """The dtype of the DiT (which the conditioners and, unless a caller says otherwise, the text encoder
    share) and of the SAME autoencoder."""

    dit: torch.dtype
    autoencoder: torch.dtype


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (the official ``model_half``), float32 elsewhere (CPU, and MPS as the official code)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def autoencoder_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.dtype:
    """The SAME autoencoder's dtype for a model run in ``dtype`` on ``device``: the same, except that
    bfloat16 on MPS becomes float32 (bf16 SAME on MPS decodes to noise)."""
    if torch.device(device).type == "mps" and dtype == torch.bfloat16:
        return torch.float32
    return dtype


def component_dtypes(device: torch.device | str, dtype: torch.dtype | None = None) -> ComponentDtypes:
    """Every module's dtype for ``device`` when the user asks for ``dtype`` (None: :func:`default_dtype`)."""
    dtype = dtype or default_dtype(device)
    return ComponentDtypes(dit=dtype, autoencoder=autoencoder_dtype(device, dtype))
