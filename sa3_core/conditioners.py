"""Prompt and duration conditioning: the two learned SA3 conditioners and the conditioning they make.

SA3 conditions on two things:

* the prompt, encoded by T5Gemma (``sa3_core.t5gemma``); padded token rows are then replaced by a learned
  ``padding_embedding`` (:class:`PromptConditioner`);
* the requested duration ``seconds_total``: exponential Fourier features + one Linear
  (:class:`SecondsConditioner`).

:class:`Conditioners` holds the two small learned parts; its ``state_dict()`` keys are the checkpoint's
``conditioner.conditioners.*`` keys without that prefix. The T5Gemma encoder is deliberately not a
submodule of it, exactly as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConditioningConfig
from .layers import ExpoFourierFeatures
from .ops import OPS, CastWeights, Operations, cast_param


class PromptConditioner(nn.Module, CastWeights):
    """Replaces padded token rows of the T5Gemma output by a learned vector (``padding_embedding``).

    With ``padding_mode="learned"`` (every released SA3 model) an empty prompt becomes 256 copies of
    ``padding_embedding``, which is what makes ``""`` act as the unconditional prompt. ``"zero"`` zeroes
    padded rows instead (no parameter). Real-token rows pass through unchanged: T5Gemma's 768 dims equal
    the conditioning width, so there is no projection.
    """

    def __init__(self, dim: int = 768, *, padding_mode: str = "learned", device=None, dtype=None):
        super().__init__()
        if padding_mode not in ("learned", "zero"):
            raise ValueError(f"unsupported padding_mode {padding_mode!r}")
        self.dim = dim
        self.padding_mode = padding_mode
        if padding_mode == "learned":
            self.padding_embedding = nn.Parameter(torch.randn(dim, device=device, dtype=dtype) * 0.02)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` (B, N, dim) and token mask (B, N) -> ``(embeddings (B, N, dim), mask (B, N) bool)``.

        The output is in the padding embedding's dtype (the model's), whatever the text encoder's was, on
        ``hidden``'s device.
        """
        if hidden.shape[-1] != self.dim:
            raise ValueError(f"prompt embeddings have {hidden.shape[-1]} channels, expected {self.dim}")
        if self.padding_mode == "learned":
            hidden = hidden.to(dtype=self.padding_embedding.dtype)
            fill = cast_param(self, "padding_embedding", hidden).expand_as(hidden)
        else:
            fill = torch.zeros_like(hidden)
        mask = mask.to(device=hidden.device, dtype=torch.bool)
        # torch.where, not a multiply: padded rows may hold anything (even NaN) and must not leak.
        return torch.where(mask.unsqueeze(-1), hidden, fill), mask


class _NumberEmbedder(nn.Module):
    """``embedding = Sequential(ExpoFourierFeatures, Linear)``: keeps the official key ``embedding.1.*``."""

    def __init__(self, dim: int, features: int, *, operations: Operations, device, dtype):
        super().__init__()
        self.embedding = nn.Sequential(
            ExpoFourierFeatures(features),
            operations.Linear(features, dim, device=device, dtype=dtype),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)


class SecondsConditioner(nn.Module):
    """``seconds_total`` -> one conditioning token (B, 1, dim).

    Seconds are clamped to ``[min_val, max_val]`` (0..384 s in SA3), scaled to [0, 1], expanded into
    256 exponential Fourier features and projected by one Linear.
    """

    def __init__(
        self,
        dim: int = 768,
        *,
        min_val: float = 0.0,
        max_val: float = 384.0,
        features: int = 256,
        operations: Operations = OPS,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if max_val <= min_val:
            raise ValueError(f"max_val {max_val} must exceed min_val {min_val}")
        self.min_val = float(min_val)
        self.max_val = float(max_val)
        self.embedder = _NumberEmbedder(dim, features, operations=operations, device=device, dtype=dtype)

    def forward(self, seconds: Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(embeddings (B, 1, dim), mask (B, 1) bool, all True)``."""
        weight = self.embedder.embedding[1].weight
        if torch.is_tensor(seconds):
            values = seconds.detach().reshape(-1).to(device=weight.device, dtype=torch.float32)
        else:
            values = torch.tensor([float(s) for s in seconds], dtype=torch.float32, device=weight.device)
        values = values.clamp(self.min_val, self.max_val)
        normalized = ((values - self.min_val) / (self.max_val - self.min_val)).to(weight.dtype)
        embeddings = self.embedder(normalized).unsqueeze(1)
        return embeddings, torch.ones(embeddings.shape[:2], dtype=torch.bool, device=embeddings.device)


@dataclass
class Conditioning:
    """The conditioning tensors the DiT consumes.

    ``cross_attn_cond`` = prompt tokens 0..255 then the seconds token (B, 257, 768); ``global_cond`` =
    the seconds embedding (B, 768). The DiT attends to all 257 tokens (the official code drops their mask);
    ``prompt_mask`` only shapes the unconditional context of a negative prompt.
    """

    cross_attn_cond: torch.Tensor  # (B, 257, 768)
    prompt_mask: torch.Tensor  # (B, 256) bool
    global_cond: torch.Tensor  # (B, 768)


class Conditioners(nn.Module):
    """The learned conditioner weights of an SA3 checkpoint (``conditioner.conditioners.*``).

    ``state_dict()`` keys: ``prompt.padding_embedding``, ``seconds_total.embedder.embedding.1.{weight,bias}``.
    The T5Gemma encoder is passed in by the caller (see ``sa3_core.t5gemma.T5GemmaTextEncoder``); it is not a
    submodule, so it is neither in the checkpoint nor moved or cast with this module.
    """

    def __init__(self, cfg: ConditioningConfig, *, operations: Operations = OPS, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.prompt = PromptConditioner(cfg.cond_dim, padding_mode=cfg.prompt.padding_mode, device=device, dtype=dtype)
        self.seconds_total = SecondsConditioner(
            cfg.cond_dim,
            min_val=cfg.seconds_total.min_val,
            max_val=cfg.seconds_total.max_val,
            operations=operations,
            device=device,
            dtype=dtype,
        )

    @property
    def max_length(self) -> int:
        """Prompt tokens the text encoder must produce (256 in every released config)."""
        return self.config.prompt.max_length

    def forward(
        self, prompt_hidden: torch.Tensor, prompt_mask: torch.Tensor, seconds: Sequence[float] | torch.Tensor
    ) -> Conditioning:
        """Text-encoder output (B, 256, 768) + mask and B durations -> the DiT's conditioning inputs."""
        prompt, mask = self.prompt(prompt_hidden, prompt_mask)
        seconds_emb, _ = self.seconds_total(seconds)
        if seconds_emb.shape[0] != prompt.shape[0]:
            raise ValueError(f"{prompt.shape[0]} prompts but {seconds_emb.shape[0]} durations")
        seconds_emb = seconds_emb.to(device=prompt.device, dtype=prompt.dtype)
        return Conditioning(
            cross_attn_cond=torch.cat([prompt, seconds_emb], dim=1),
            prompt_mask=mask,
            global_cond=seconds_emb.squeeze(1),
        )
