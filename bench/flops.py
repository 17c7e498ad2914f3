"""FLOPs of each stage, counted by torch's FlopCounterMode on the real modules (matmuls, convolutions and
attention; elementwise work is not counted, so "FLOPs / matmul rate" is a floor no run can beat).

The DiT and SAME are counted on ``meta`` copies (built by ``checkpoint.build_modules``: no memory, no
compute, identical shapes and code path). The T5Gemma encoder cannot run on ``meta`` (transformers calls
``.item()``), so it is counted on one real forward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sa3_core.checkpoint import AUTOENCODER_PREFIX, DIT_PREFIX, build_modules
from sa3_core.config import ModelConfig

# Modules whose output is the same at every sampling step (they only see the conditioning).
_STEP_INVARIANT = re.compile(r"\.(to_cond_embed|to_global_embed|cross_attn\.to_kv|to_local_embed)$")


@dataclass(frozen=True)
class DiTFlops:
    forward: float  # one DiT forward
    step_invariant: float  # the part of it that depends only on the conditioning

    def sampling(self, model_calls: int) -> float:
        """The floor for ``model_calls`` forwards: the step-invariant part is needed once."""
        return model_calls * (self.forward - self.step_invariant) + self.step_invariant


class FlopModel:
    """Meta-device copies of the DiT and SAME of ``config`` for counting."""

    def __init__(self, config: ModelConfig, attention_backend: str = "auto"):
        modules = build_modules(config, device="meta", dtype=torch.float32, attention_backend=attention_backend)
        self.config = config
        self.dit = modules[DIT_PREFIX]
        self.autoencoder = modules[AUTOENCODER_PREFIX]

    def dit_forward(self, batch: int, latents: int) -> DiTFlops:
        """One DiT forward on (batch, 256, latents) with a padding mask and inpaint input, as the pipeline."""
        meta = dict(device="meta")
        cfg = self.config.dit
        args = (
            torch.zeros(batch, cfg.io_channels, latents, **meta),
            torch.zeros(batch, **meta),
            torch.zeros(batch, 257, cfg.cond_token_dim, **meta),
            torch.zeros(batch, cfg.global_cond_dim, **meta),
            torch.zeros(batch, cfg.local_add_cond_dim, latents, **meta),
        )
        with FlopCounterMode(display=False) as counter:
            self.dit(*args, padding_mask=torch.ones(batch, latents, dtype=torch.bool, **meta))
        per_module = counter.get_flop_counts()
        invariant = sum(sum(ops.values()) for name, ops in per_module.items() if _STEP_INVARIANT.search(name))
        return DiTFlops(float(counter.get_total_flops()), float(invariant))

    def decode(self, batch: int, latents: int, chunked: bool, trim: bool = True) -> float:
        """SAME decode of (batch, 256, latents), chunked (official 128/32 chunks; ``trim``: see
        ``SAMEAutoencoder.iter_decode_audio``) or in one pass."""
        kwargs = {"trim": trim} if "trim" in self.autoencoder.decode_audio.__code__.co_varnames else {}
        with FlopCounterMode(display=False) as counter:
            self.autoencoder.decode_audio(torch.zeros(batch, 256, latents, device="meta"), chunked=chunked, **kwargs)
        return float(counter.get_total_flops())


def count_flops(fn, *args, **kwargs) -> tuple[float, object]:
    """FLOPs of one real call ``fn(*args, **kwargs)`` and its result."""
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return float(counter.get_total_flops()), result
