"""The SA3 diffusion transformer (DiT): predicts the rectified-flow velocity ``v`` of the latents.

Layout (names = official checkpoint keys without ``model.model.``)::

    to_timestep_embed   ExpoFourier(256) of t -> Linear -> SiLU -> Linear            (with biases)
    to_cond_embed       prompt+seconds tokens (B, 257, 768) -> E                    (bias-free)
    to_global_embed     seconds embedding (B, 768) -> E                             (bias-free)
    preprocess_conv     1x1 conv residual on the input latents
    transformer
      project_in        256 -> E;  memory_tokens (64, E) are put FIRST in the sequence
      rotary_pos_emb    RoPE table (checkpoint buffer inv_freq) over memory + latent positions
      global_cond_embedder  (global + timestep) E -> SiLU -> 6E adaLN modulation
      layers[i]         adaLN self-attention, cross-attention, local inpaint embedding, adaLN SwiGLU
      project_out       E -> 256
    postprocess_conv    1x1 conv residual on the output

Padding: ``padding_mask`` (B, L) marks valid latent frames; memory tokens are always valid. How padded
frames are masked depends on the attention backend (see :mod:`sa3_core.attention`): V-zeroing for
"sdpa"/"band" (official no-flash path, which made the fixtures), key exclusion plus zeroed padded rows
for "flash" (official CUDA varlen path; the feed-forward of padded rows is zeroed too, as there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import resolve_backend
from .config import DiTConfig
from .layers import Attention, ExpoFourierFeatures, FeedForward, RMSNorm, RotaryEmbedding, rotary_tables
from .ops import OPS, LearnedTensor, Operations, attach_tensor


def _mlp(dim_in: int, dim_out: int, *, bias: bool, operations: Operations, device, dtype) -> nn.Sequential:
    """Linear -> SiLU -> Linear, as the official ``nn.Sequential`` (keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(
        operations.Linear(dim_in, dim_out, bias=bias, device=device, dtype=dtype),
        nn.SiLU(),
        operations.Linear(dim_out, dim_out, bias=bias, device=device, dtype=dtype),
    )


class DiTBlock(nn.Module):
    """One transformer block with adaLN modulation (official ``TransformerBlock``, adaLN branch).

    ``to_scale_shift_gate`` (6E) plus the per-item modulation gives, in this order, scale/shift/gate for
    self-attention and for the feed-forward. Gates enter as ``sigmoid(1 - gate)``. Cross-attention is
    neither modulated nor gated, and gets no mask (the official code discards the prompt mask).
    """

    def __init__(self, cfg: DiTConfig, *, backend: str, operations: Operations, device=None, dtype=None):
        super().__init__()
        dim = cfg.embed_dim
        norm = dict(eps=1e-5, force_fp32=cfg.norm_force_fp32, device=device, dtype=dtype)
        attn = dict(
            dim_heads=cfg.head_dim,
            differential=cfg.differential,
            qk_norm="rms",
            qk_norm_eps=1e-6,
            backend=backend,
            operations=operations,
            device=device,
            dtype=dtype,
        )
        # A leaf module of its own (key still ``to_scale_shift_gate``), so ComfyUI can load it partially.
        attach_tensor(self, "to_scale_shift_gate", LearnedTensor(6 * dim, device=device, dtype=dtype))
        self.pre_norm = RMSNorm(dim, **norm)
        self.self_attn = Attention(dim, **attn)
        self.cross_attend_norm = RMSNorm(dim, **norm)
        self.cross_attn = Attention(dim, context_dim=dim, **attn)
        self.ff_norm = RMSNorm(dim, **norm)
        self.ff = FeedForward(dim, cfg.ff_mult, operations=operations, device=device, dtype=dtype)
        self.to_local_embed = _mlp(
            cfg.local_add_cond_dim, dim, bias=True, operations=operations, device=device, dtype=dtype
        )

    def constants(self, context: torch.Tensor, local_add_cond: torch.Tensor | None, tokens: int) -> BlockConstants:
        """What this block computes from the conditioning alone: the same at every sampling step.

        ``context`` (B, 257, E) is the embedded cross-attention conditioning, ``local_add_cond`` (B, L', 257)
        the inpaint input, aligned to the last L' of ``tokens`` positions (official ``_left_pad_to_match``).
        """
        local = None
        if local_add_cond is not None:
            local = self.to_local_embed(local_add_cond)
            # Aligned to the end of the sequence: zero-padded on the left over the memory tokens when it covers
            # the latents only (L' = L), cut on the left when it is longer than the whole sequence.
            local = F.pad(local, (0, 0, tokens - local.shape[1], 0))
        return BlockConstants(self.cross_attn.context_keys_values(context), local)

    def forward(
        self,
        x: torch.Tensor,
        *,
        constants: BlockConstants,
        modulation: torch.Tensor,
        rotary_freqs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        padding_mask: torch.Tensor | None,
        zero_padded_ff: bool,
    ) -> torch.Tensor:
        """``x`` (B, M+L, E); ``constants`` from :meth:`constants`; ``modulation`` (B, 6E);
        ``padding_mask`` (B, M+L) or None; ``zero_padded_ff`` zeroes the FFN branch at padded rows (flash)."""
        gates = (self.to_scale_shift_gate(modulation) + modulation).unsqueeze(1)
        scale_attn, shift_attn, gate_attn, scale_ff, shift_ff, gate_ff = gates.chunk(6, dim=-1)

        h = self.pre_norm(x) * (1 + scale_attn) + shift_attn
        h = self.self_attn(h, rotary_freqs=rotary_freqs, key_padding_mask=padding_mask)
        x = x + h * torch.sigmoid(1 - gate_attn)

        x = x + self.cross_attn(self.cross_attend_norm(x), context_kv=constants.context_kv)

        if constants.local is not None:
            x = x + constants.local

        h = self.ff_norm(x) * (1 + scale_ff) + shift_ff
        h = self.ff(h)
        if zero_padded_ff and padding_mask is not None:
            h = h * padding_mask[..., None].to(h.dtype)
        return x + h * torch.sigmoid(1 - gate_ff)


@dataclass(frozen=True)
class BlockConstants:
    """One block's step-invariant tensors: cross-attention keys/values and the padded local embedding."""

    context_kv: tuple[list[torch.Tensor], torch.Tensor]
    local: torch.Tensor | None


@dataclass(frozen=True)
class StepConstants:
    """Everything a DiT forward computes from the conditioning alone, for one batch of conditioning: the
    same at every sampling step (:meth:`DiffusionTransformer.step_constants`)."""

    global_embed: torch.Tensor  # to_global_embed(global_cond), (B, E), before the timestep is added
    blocks: tuple[BlockConstants, ...]
    latents: int  # the latent length L the inpaint embeddings were aligned to


class DiTTransformer(nn.Module):
    """The token-sequence part of the DiT (official ``ContinuousTransformer``, key prefix ``transformer.``)."""

    def __init__(self, cfg: DiTConfig, *, backend: str, operations: Operations, device=None, dtype=None):
        super().__init__()
        dim = cfg.embed_dim
        self.num_memory_tokens = cfg.num_memory_tokens
        if cfg.num_memory_tokens:  # first, as the official parameter: the same state-dict order
            attach_tensor(self, "memory_tokens", LearnedTensor(cfg.num_memory_tokens, dim, device=device, dtype=dtype))
        self.project_in = operations.Linear(cfg.io_channels, dim, bias=False, device=device, dtype=dtype)
        self.project_out = operations.Linear(dim, cfg.io_channels, bias=False, device=device, dtype=dtype)
        self.rotary_pos_emb = RotaryEmbedding(max(cfg.head_dim // 2, 32), device=device, dtype=dtype)
        self.global_cond_embedder = nn.Sequential(
            operations.Linear(dim, dim, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(dim, dim * 6, device=device, dtype=dtype),
        )
        self.layers = nn.ModuleList(
            DiTBlock(cfg, backend=backend, operations=operations, device=device, dtype=dtype) for _ in range(cfg.depth)
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        constants: StepConstants,
        timestep_embed: torch.Tensor,
        padding_mask: torch.Tensor | None,
        zero_padded_ff: bool,
    ) -> torch.Tensor:
        """``x`` (B, L, 256) -> (B, L, 256); ``timestep_embed`` (B, E) is added to the global embedding."""
        batch = x.shape[0]
        h = self.project_in(x)
        if self.num_memory_tokens:
            memory = self.memory_tokens(h).expand(batch, -1, -1)
            h = torch.cat([memory, h], dim=1)
            if padding_mask is not None:
                always_valid = torch.ones(batch, self.num_memory_tokens, dtype=torch.bool, device=padding_mask.device)
                padding_mask = torch.cat([always_valid, padding_mask], dim=1)
        # cos/sin once per forward, shared by every layer (not recomputed per layer, query and key).
        rotary = rotary_tables(self.rotary_pos_emb(h.shape[1], device=h.device))
        modulation = self.global_cond_embedder(constants.global_embed + timestep_embed)
        for layer, layer_constants in zip(self.layers, constants.blocks):
            h = layer(
                h,
                constants=layer_constants,
                modulation=modulation,
                rotary_freqs=rotary,
                padding_mask=padding_mask,
                zero_padded_ff=zero_padded_ff,
            )
        return self.project_out(h[:, self.num_memory_tokens :])


class DiffusionTransformer(nn.Module):
    """SA3 DiT. ``state_dict()`` keys equal the checkpoint's ``model.model.*`` keys without that prefix.

    Args:
        cfg: the parsed ``model.diffusion.config``.
        operations: namespace providing ``Linear`` and ``Conv1d`` (:data:`sa3_core.ops.OPS`, a float8-storing
            one from :func:`sa3_core.ops.storing`, or ``comfy.ops.*``).
        attention_backend: "auto", "sdpa", "band" or "flash" (see :mod:`sa3_core.attention`); can be changed
            later through the ``attention_backend`` property.

    ``compute_dtype`` (attribute, default None) is the dtype the forward runs in; None means the dtype of
    the parameters, like the official code, which casts every input to the model dtype.
    """

    def __init__(
        self,
        cfg: DiTConfig,
        *,
        operations: Operations = OPS,
        device=None,
        dtype=None,
        attention_backend: str = "auto",
    ):
        super().__init__()
        self.config = cfg
        self.compute_dtype: torch.dtype | None = None
        dim = cfg.embed_dim
        self.timestep_features = ExpoFourierFeatures(cfg.timestep_features_dim, 0.5, 10000.0)
        self.to_timestep_embed = nn.Sequential(
            operations.Linear(cfg.timestep_features_dim, dim, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(dim, dim, device=device, dtype=dtype),
        )
        self.to_cond_embed = _mlp(
            cfg.cond_token_dim, dim, bias=False, operations=operations, device=device, dtype=dtype
        )
        self.to_global_embed = _mlp(
            cfg.global_cond_dim, dim, bias=False, operations=operations, device=device, dtype=dtype
        )
        self.transformer = DiTTransformer(
            cfg, backend=attention_backend, operations=operations, device=device, dtype=dtype
        )
        channels = cfg.io_channels
        self.preprocess_conv = operations.Conv1d(channels, channels, 1, bias=False, device=device, dtype=dtype)
        self.postprocess_conv = operations.Conv1d(channels, channels, 1, bias=False, device=device, dtype=dtype)
        self._attention_backend = attention_backend

    @property
    def attention_backend(self) -> str:
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, backend: str) -> None:
        resolve_backend(backend, torch.device("cpu"), windowed=False)  # validates the name
        self._attention_backend = backend
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend

    def _dtype(self) -> torch.dtype:
        return self.compute_dtype or self.transformer.project_in.weight.dtype

    def step_constants(
        self,
        cross_attn_cond: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None,
        latents: int,
    ) -> StepConstants:
        """The step-invariant part of a forward (see :meth:`forward` for the shapes): the prompt embedding,
        every layer's cross-attention keys/values and inpaint embedding (about 10% of small-music's FLOPs at
        30 s) and the global embedding. A sampler computes them once per conditioning batch and passes them
        to every step's forward (``constants=``); the result is bit-identical to recomputing them."""
        dtype = self._dtype()
        context = self.to_cond_embed(cross_attn_cond.to(dtype))
        global_embed = self.to_global_embed(global_cond.to(dtype))
        if local_add_cond is not None:
            local_add_cond = local_add_cond.to(dtype).transpose(1, 2)
        tokens = latents + self.transformer.num_memory_tokens
        blocks = tuple(layer.constants(context, local_add_cond, tokens) for layer in self.transformer.layers)
        return StepConstants(global_embed, blocks, latents)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cross_attn_cond: torch.Tensor,
        global_cond: torch.Tensor,
        local_add_cond: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        *,
        constants: StepConstants | None = None,
    ) -> torch.Tensor:
        """One model evaluation.

        Args:
            x: noisy latents (B, 256, L).
            t: flow time per item (B,) in [0, 1] (a 0-dim tensor is broadcast over the batch).
            cross_attn_cond: prompt + seconds tokens (B, 257, 768); never masked.
            global_cond: seconds embedding (B, 768).
            local_add_cond: inpaint mask + masked latents (B, 257, L), or None. Aligned to the END of the
                memory + latent sequence, as officially, so a longer one (an odd SAME-S window's inpaint
                source, L + 1) reaches one step into the memory tokens.
            padding_mask: (B, L) bool, True = valid frame; None = no masking.
            constants: :meth:`step_constants` of this very conditioning, computed once for a whole sampling
                run; None computes them here.

        Returns:
            velocity ``v`` (B, 256, L) in the compute dtype.
        """
        dtype = self._dtype()
        x = x.to(dtype)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if constants is None:
            constants = self.step_constants(cross_attn_cond, global_cond, local_add_cond, x.shape[-1])
        elif constants.global_embed.shape[0] != x.shape[0] or constants.latents != x.shape[-1]:
            raise ValueError(
                f"step constants of {constants.global_embed.shape[0]} x {constants.latents} latents "
                f"for an input of {x.shape[0]} x {x.shape[-1]}"
            )
        # The timestep is quantised to the model dtype before the Fourier features, as officially.
        timestep = self.to_timestep_embed(self.timestep_features(t.to(dtype)[:, None]))
        if padding_mask is not None:
            padding_mask = padding_mask.to(device=x.device, dtype=torch.bool)
        flash = resolve_backend(self._attention_backend, x.device, windowed=False) == "flash"

        x = self.preprocess_conv(x) + x
        out = self.transformer(
            x.transpose(1, 2),
            constants=constants,
            timestep_embed=timestep,
            padding_mask=padding_mask,
            zero_padded_ff=flash,
        ).transpose(1, 2)
        return self.postprocess_conv(out) + out
