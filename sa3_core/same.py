"""SAME: the Stable Audio 3 autoencoder (44.1 kHz stereo <-> 256-channel latents at 4096 samples each).

The pipeline, encoder side (the decoder runs it backwards)::

    audio (B, 2, T)
      -> PatchedPretransform     256-sample patches, channel-major: (B, 512, T/256)
      -> TransformerResampler    WN-conv mapping 512 -> d, then groups of 16 patches + 1 learned token
                                 through a DyT / differential-attention transformer; the learned
                                 token of each group is the output: (B, d, T/4096)
      -> Linear d -> 256
      -> SoftNormBottleneck      affine + fixed scale: latents (B, 256, L)

Attention never spans the whole sequence. SAME-S runs full attention inside chunks of 2 latents
(34 tokens), the second half of the layers on chunks shifted by one latent so information crosses
chunk borders. SAME-L uses a sliding window of +-17 tokens (one latent each side).

Module names and parameter shapes follow the official checkpoints, so ``state_dict()`` keys equal the
``pretransform.model.*`` keys of an SA3 ``model.safetensors`` with that prefix stripped (and the bare
keys of the standalone SAME-S / SAME-L files).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import audio_prep
from .attention import BACKENDS
from .config import AutoencoderConfig, SAMEConfig
from .layers import Attention, DyT, FeedForward, RotaryEmbedding
from .ops import OPS, CastWeights, LearnedTensor, Operations, attach_tensor, cast_param

# --------------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------------


class PatchedPretransform(nn.Module):
    """Cuts audio into fixed-size patches and stacks them as channels (no parameters).

    Channel-major: for stereo and 256-sample patches, channels 0-255 are the left samples of a
    patch and channels 256-511 the right ones.
    """

    def __init__(self, channels: int, patch_size: int):
        super().__init__()
        self.channels = channels
        self.patch_size = patch_size

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C * patch, ceil(T / patch)); the tail is zero-padded to a whole patch."""
        batch, channels, length = audio.shape
        audio = F.pad(audio, (0, -length % self.patch_size))
        patches = audio.reshape(batch, channels, -1, self.patch_size)  # (B, C, n, h)
        return patches.permute(0, 1, 3, 2).reshape(batch, channels * self.patch_size, -1)

    def decode(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, C * patch, n) -> (B, C, n * patch), the exact inverse of ``encode``."""
        batch, _, count = patches.shape
        audio = patches.reshape(batch, self.channels, self.patch_size, count)
        return audio.permute(0, 1, 3, 2).reshape(batch, self.channels, count * self.patch_size)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class WeightNormConv1d(nn.Module, CastWeights):
    """Conv1d with the *old* ``torch.nn.utils.weight_norm`` parametrisation and "same" padding.

    The checkpoints store ``weight_g`` [out, 1, 1] and ``weight_v`` [out, in, k]; the effective weight
    is ``g * v / ||v||`` with the norm over (in, k) per output channel. ComfyUI's ops cannot express
    this, so the weight is computed here (in float32) and cast to the input's dtype and device at call
    time, the way ``comfy.ops`` manual casting treats stored weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
        factory = {"device": device, "dtype": dtype}
        self.kernel_size = kernel_size
        self.weight_g = nn.Parameter(torch.ones(out_channels, 1, 1, **factory))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, **factory))
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None
        if self.weight_v.device.type != "meta":  # fresh weights as torch's weight_norm would start them
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
                self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))

    def effective_weight(self, device: torch.device | None = None) -> torch.Tensor:
        """``g * v / ||v||`` in float32 (on ``device`` when given)."""
        v = self.weight_v.to(device=device, dtype=torch.float32)
        g = self.weight_g.to(device=device, dtype=torch.float32)
        return v * (g / v.norm(dim=(1, 2), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_weight(x.device).to(x.dtype)
        return F.conv1d(x, weight, cast_param(self, "bias", x), padding=self.kernel_size // 2)


class Transpose(nn.Module):
    """Swaps the last two dimensions; keeps the official ``layers`` indices (and so the keys) intact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2)


class SAMEBlock(nn.Module):
    """Pre-norm transformer block: ``x + SelfAttn(DyT(x))`` then ``x + FFN(DyT(x))``.

    No conditioning and no gates. RoPE positions restart at 0 for every sequence the block is given
    (every chunk for SAME-S, the whole packed sequence for SAME-L).
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_heads: int,
        differential: bool,
        ff_mult: int,
        sinusoidal: bool,
        operations: Operations,
        attention_backend: str,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.pre_norm = DyT(dim, **factory)
        self.self_attn = Attention(
            dim,
            dim_heads=dim_heads,
            differential=differential,
            qk_norm="dyt",
            backend=attention_backend,
            operations=operations,
            **factory,
        )
        self.ff_norm = DyT(dim, **factory)
        self.ff = FeedForward(dim, mult=ff_mult, sinusoidal=sinusoidal, operations=operations, **factory)
        self.rope = RotaryEmbedding(dim_heads // 2, **factory)

    def forward(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        freqs = self.rope(x.shape[-2], device=x.device)
        x = x + self.self_attn(self.pre_norm(x), rotary_freqs=freqs, window=window)
        return x + self.ff(self.ff_norm(x))


class TransformerResampler(nn.Module):
    """The Transformer Resampling Block: turns 16 patches into 1 latent token, or 1 latent into 16.

    Every group of the packed sequence holds 17 tokens. Encoder: 16 mapped patches followed by one
    learned token, whose output becomes the latent. Decoder: one latent followed by 16 copies of the
    learned token, whose outputs become the patches. The learned token is a single vector
    (``variable_stride``), broadcast to every slot.
    """

    def __init__(
        self,
        cfg: SAMEConfig,
        side: str,
        *,
        operations: Operations,
        attention_backend: str,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ):
        super().__init__()
        if side not in ("encoder", "decoder"):
            raise ValueError(f"side must be 'encoder' or 'decoder', got {side!r}")
        if cfg.transformer_depths[0] < 1:
            raise ValueError("SAME needs at least one transformer layer per resampling block")
        factory = {"device": device, "dtype": dtype}
        # The learned token: a leaf module of its own (key still ``new_tokens``) so that ComfyUI can load it
        # partially; registered first, where the official parameter sits in the state dict.
        attach_tensor(self, "new_tokens", LearnedTensor(1, 1, cfg.width, **factory))
        self.side = side
        self.stride = cfg.strides[0]
        self.group = self.stride + 1  # tokens per latent in the packed sequence
        dim = cfg.width
        depth = cfg.transformer_depths[0]

        kernel = 3 if cfg.conv_mapping else 1
        if side == "encoder":
            self.mapping = WeightNormConv1d(cfg.io_channels, dim, kernel, **factory)
        else:
            self.mapping = WeightNormConv1d(dim, cfg.io_channels, kernel, **factory)

        # The official rule: block i gets the sin(pi x) gate when depth - i < sinusoidal_blocks.
        sinusoidal_blocks = cfg.sinusoidal_blocks[0]
        self.transformers = nn.ModuleList(
            SAMEBlock(
                dim,
                dim_heads=cfg.dim_heads,
                differential=cfg.differential,
                ff_mult=cfg.ff_mult,
                sinusoidal=(depth - i) < sinusoidal_blocks,
                operations=operations,
                attention_backend=attention_backend,
                **factory,
            )
            for i in range(depth)
        )

        if cfg.sliding_window is not None:
            left, right = (w * self.group for w in cfg.sliding_window)
            if left != right:
                raise ValueError(f"only symmetric sliding windows are supported, got {cfg.sliding_window}")
            self.window: int | None = left
            self.chunk_tokens = None
            self.midpoint_shift = False
            # Pad to whole groups only.
            self.pad_multiple = self.stride if side == "encoder" else 1
        else:
            if cfg.chunk_size is None or cfg.chunk_size % self.stride:
                raise ValueError(f"chunk_size {cfg.chunk_size} must be a multiple of the stride {self.stride}")
            self.window = None
            self.chunk_tokens = cfg.chunk_size // self.stride * self.group  # 32 patches -> 34 tokens
            self.midpoint_shift = cfg.chunk_midpoint_shift
            # Pad so that the packed sequence splits into whole chunks (in input positions).
            self.pad_multiple = cfg.chunk_size if side == "encoder" else cfg.chunk_size // self.stride

    def decode_halo(self) -> int | None:
        """Latents on each side of a range that can change its decoded output, when decoding a smaller
        piece gives bit-identical results; None when it does not.

        Chunked attention (SAME-S) restarts RoPE in every 34-token chunk, so a piece that starts on the
        same 2-latent grid computes exactly the same numbers. Reach: one chunk for the aligned layers, one
        for the shifted layers, one latent for the replicate padding at a piece's ends, one for the
        kernel-3 mapping conv; rounded up to whole chunks to keep the grid. A sliding window (SAME-L)
        gives RoPE positions that run over the whole piece: a different start changes the rounding.
        """
        if self.window is not None:
            return None
        chunk_latents = self.chunk_tokens // self.group
        reach = chunk_latents * (2 if self.midpoint_shift else 1) + 1 + (self.mapping.kernel_size // 2 > 0)
        return -(-reach // chunk_latents) * chunk_latents

    # -- attention layout ---------------------------------------------------------------------------

    def _run_in_chunks(self, x: torch.Tensor, blocks: list[SAMEBlock]) -> torch.Tensor:
        batch, length, dim = x.shape
        size = self.chunk_tokens
        x = x.reshape(batch * (length // size), size, dim)
        for block in blocks:
            x = block(x)
        return x.reshape(batch, length, dim)

    def _run_transformers(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self.transformers)
        if self.window is not None:
            for block in blocks:
                x = block(x, window=self.window)
            return x
        if not self.midpoint_shift:
            return self._run_in_chunks(x, blocks)
        # First half of the layers on aligned chunks, second half on chunks shifted by half a chunk
        # (one latent). The shifted layout needs half a chunk more at each end: the official code
        # repeats the first and last half-chunk (whole 17-token groups), not zeros.
        split = len(blocks) // 2
        half = self.chunk_tokens // 2
        x = self._run_in_chunks(x, blocks[:split])
        x = torch.cat([x[:, :half], x, x[:, -half:]], dim=1)
        x = self._run_in_chunks(x, blocks[split:])
        return x[:, half:-half]

    # -- resampling ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._downsample(x) if self.side == "encoder" else self._upsample(x)

    def _downsample(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) patches -> (B, d, ceil(T / pad_multiple) * pad_multiple / stride) tokens."""
        # Pad before the mapping (as the official code does): padded zeros pass through the conv.
        patches = F.pad(patches, (0, -patches.shape[-1] % self.pad_multiple))
        x = self.mapping(patches).transpose(1, 2)  # (B, T, d)
        batch, length, dim = x.shape
        groups = x.reshape(batch * (length // self.stride), self.stride, dim)
        learned = self.new_tokens(x).expand(groups.shape[0], 1, dim)
        x = torch.cat([groups, learned], dim=1).reshape(batch, -1, dim)
        x = self._run_transformers(x)
        latents = x.reshape(batch, -1, self.group, dim)[:, :, -1]  # the learned token of each group
        return latents.transpose(1, 2)

    def _upsample(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, d, L) -> (B, C_out, L' * stride), L' = L rounded up to pad_multiple (not trimmed back)."""
        x = latents.transpose(1, 2)  # (B, L, d)
        x = F.pad(x, (0, 0, 0, -x.shape[1] % self.pad_multiple))
        batch, length, dim = x.shape
        learned = self.new_tokens(x).expand(batch * length, self.stride, dim)
        x = torch.cat([x.reshape(batch * length, 1, dim), learned], dim=1).reshape(batch, -1, dim)
        x = self._run_transformers(x)
        x = x.reshape(batch, length, self.group, dim)[:, :, 1:]  # the 16 learned slots of each group
        return self.mapping(x.reshape(batch, length * self.stride, dim).transpose(1, 2))


class SAMEEncoder(nn.Module):
    """Patches (B, 512, T) -> pre-bottleneck latents (B, 256, T / 16). ``layers`` = [TRB, T, Linear, T]."""

    def __init__(
        self,
        cfg: SAMEConfig,
        *,
        operations: Operations,
        attention_backend: str,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                TransformerResampler(
                    cfg,
                    "encoder",
                    operations=operations,
                    attention_backend=attention_backend,
                    device=device,
                    dtype=dtype,
                ),
                Transpose(),
                operations.Linear(cfg.width, cfg.latent_dim, device=device, dtype=dtype),
                Transpose(),
            ]
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            patches = layer(patches)
        return patches


class SAMEDecoder(nn.Module):
    """Latents (B, 256, L) -> patches (B, 512, 16 L). ``layers`` = [T, Linear, T, TRB]."""

    def __init__(
        self,
        cfg: SAMEConfig,
        *,
        operations: Operations,
        attention_backend: str,
        device: torch.device | None,
        dtype: torch.dtype | None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                Transpose(),
                operations.Linear(cfg.latent_dim, cfg.width, device=device, dtype=dtype),
                Transpose(),
                TransformerResampler(
                    cfg,
                    "decoder",
                    operations=operations,
                    attention_backend=attention_backend,
                    device=device,
                    dtype=dtype,
                ),
            ]
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            latents = layer(latents)
        return latents


class SoftNormBottleneck(nn.Module, CastWeights):
    """Per-channel affine, then a global scale (``running_std``, frozen at inference).

    ``noise_scaling_factor`` has zero channels in every released model (no noise augmentation); it
    is kept only because the checkpoints carry the empty tensor.
    """

    def __init__(self, dim: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.scaling_factor = nn.Parameter(torch.ones(1, dim, 1, **factory))
        self.bias = nn.Parameter(torch.zeros(1, dim, 1, **factory))
        self.noise_scaling_factor = nn.Parameter(torch.ones(1, 0, 1, **factory))
        self.running_std = nn.Parameter(torch.ones(1, **factory), requires_grad=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x * cast_param(self, "scaling_factor", x) + cast_param(self, "bias", x)
        return x / cast_param(self, "running_std", x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * cast_param(self, "running_std", z)


# --------------------------------------------------------------------------------------------------
# Chunking (the official encode_audio / decode_audio scheme)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a chunked encode/decode, in latents.

    The chunk covers ``[start, start + size)``; its output is kept for ``[keep_start, keep_end)``.
    """

    start: int
    size: int
    keep_start: int
    keep_end: int


def plan_chunks(total: int, chunk_size: int, overlap: int) -> list[ChunkSpan]:
    """The official chunk layout over ``total`` latents, as non-overlapping kept ranges.

    Chunks start every ``chunk_size - overlap`` latents, plus one anchored to the end. Each chunk
    drops ``overlap // 2`` latents on every side that faces a neighbour; where the kept ranges still
    overlap (an odd overlap, or the end-anchored chunk) the later chunk wins, exactly as the official
    code, which writes chunks in order and lets later ones overwrite. Requires ``total >= chunk_size``.
    """
    if chunk_size < 1 or not 0 <= overlap < chunk_size:
        raise ValueError(f"need chunk_size >= 1 and 0 <= overlap < chunk_size, got {chunk_size} / {overlap}")
    if total < chunk_size:
        raise ValueError(f"{total} latents are fewer than one chunk of {chunk_size}")
    last = total - chunk_size
    starts = list(range(0, last + 1, chunk_size - overlap))
    if starts[-1] != last:
        starts.append(last)
    trim = overlap // 2
    ranges = []
    for i, start in enumerate(starts):
        left = 0 if i == 0 else trim
        right = chunk_size if i == len(starts) - 1 else chunk_size - trim
        ranges.append((start + left, start + right))
    spans = []
    for i, (start, (keep_start, keep_end)) in enumerate(zip(starts, ranges)):
        if i + 1 < len(ranges):
            keep_end = min(keep_end, ranges[i + 1][0])  # the next chunk overwrites the rest
        spans.append(ChunkSpan(start, chunk_size, keep_start, keep_end))
    return spans


# --------------------------------------------------------------------------------------------------
# The autoencoder
# --------------------------------------------------------------------------------------------------


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r} (choose from {', '.join(BACKENDS)})")


class SAMEAutoencoder(nn.Module):
    """SAME-S / SAME-L: ``encode`` audio (B, 2, T) at 44.1 kHz to latents (B, 256, L), ``decode`` back.

    ``attention_backend`` is handed to every attention layer ("auto", "sdpa", "band", "flash").
    """

    def __init__(
        self,
        cfg: AutoencoderConfig,
        *,
        operations: Operations = OPS,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        attention_backend: str = "auto",
    ):
        super().__init__()
        _check_backend(attention_backend)
        self.config = cfg
        common = {"operations": operations, "attention_backend": attention_backend, "device": device, "dtype": dtype}
        self.pretransform = PatchedPretransform(cfg.audio_channels, cfg.patch_size)
        self.encoder = SAMEEncoder(cfg.encoder, **common)
        self.decoder = SAMEDecoder(cfg.decoder, **common)
        self.bottleneck = SoftNormBottleneck(cfg.latent_dim, device=device, dtype=dtype)

    def set_attention_backend(self, backend: str) -> None:
        """Switch every attention layer to ``backend`` ("auto", "sdpa", "band", "flash")."""
        _check_backend(backend)
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend

    @property
    def downsampling_ratio(self) -> int:
        return self.config.downsampling_ratio

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def audio_channels(self) -> int:
        return self.config.audio_channels

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def io_channels(self) -> int:
        """The official name of :attr:`audio_channels`."""
        return self.audio_channels

    # -- the official preprocessing -------------------------------------------------------------------

    def preprocess_audio_for_encoder(self, audio: torch.Tensor, in_sr: int) -> torch.Tensor:
        """One clip (C, T) / (T,) / (1, C, T) at ``in_sr`` -> a (1, 2, T') batch ready for :meth:`encode`:
        resampled to 44.1 kHz, channels fitted, zero-padded to whole latents."""
        return self.preprocess_audio_list_for_encoder([audio], [in_sr])

    def preprocess_audio_list_for_encoder(
        self, audio_list: list[torch.Tensor], in_sr_list: int | list[int]
    ) -> torch.Tensor:
        """Clips of any lengths / rates / channel counts -> one (B, 2, T) batch, zero-padded to the longest
        (rounded up to whole latents). ``in_sr_list``: one rate per clip, or one for all."""
        return audio_prep.encoder_batch(
            audio_list, in_sr_list, self.sample_rate, self.downsampling_ratio, self.audio_channels
        )

    # -- whole-signal ---------------------------------------------------------------------------------

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio (B, 2, T) -> latents (B, 256, L) in one pass.

        L is T / 4096 rounded up, and for SAME-S further up to an even number (the official code
        pads to whole 2-latent chunks and keeps the padding).
        """
        return self.bottleneck.encode(self.encoder(self.pretransform.encode(audio)))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 256, L) -> audio (B, 2, 4096 L') in one pass.

        L' = L, except for SAME-S with odd L: like the official code the decoder pads to an even
        length and returns the extra 4096 samples.
        """
        audio = self.pretransform.decode(self.decoder(self.bottleneck.decode(latents)))
        return torch.tanh(audio) if self.config.soft_clip else audio

    def encoded_length(self, samples: int, chunked: bool, chunk_size: int = 128) -> int:
        """Latents :meth:`encode_audio` returns for ``samples`` samples: ceil(samples / 4096), and when encoded
        in one piece rounded up to the encoder's whole attention chunks (SAME-S: 2 latents)."""
        if chunked and samples >= chunk_size * self.downsampling_ratio:
            return -(-samples // self.downsampling_ratio)
        resampler = self.encoder.layers[0]
        patches = -(-samples // self.config.patch_size)
        return -(-patches // resampler.pad_multiple) * resampler.pad_multiple // resampler.stride

    # -- chunked (official scheme, sizes in latents) --------------------------------------------------

    def encode_audio(
        self, audio: torch.Tensor, chunked: bool = False, chunk_size: int = 128, overlap: int = 32
    ) -> torch.Tensor:
        """Encode, in overlapping chunks of ``chunk_size`` latents when ``chunked`` and the audio is long enough.

        Chunked output has exactly ceil(T / 4096) latents. The audio is zero-padded to whole
        latents first (the official code assumes it already is; ``generate`` always makes it so).
        """
        ratio = self.downsampling_ratio
        if not chunked or audio.shape[-1] < chunk_size * ratio:
            return self.encode(audio)
        audio = F.pad(audio, (0, -audio.shape[-1] % ratio))
        total = audio.shape[-1] // ratio
        output = None
        for span in plan_chunks(total, chunk_size, overlap):
            latents = self.encode(audio[..., span.start * ratio : (span.start + span.size) * ratio])
            if output is None:
                output = latents.new_zeros(*latents.shape[:-1], total)
            output[..., span.keep_start : span.keep_end] = latents[
                ..., span.keep_start - span.start : span.keep_end - span.start
            ]
        return output

    def iter_decode_audio(
        self, latents: torch.Tensor, chunk_size: int = 128, overlap: int = 32, trim: bool = True
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Decode chunk by chunk, yielding ``(first_sample, audio_piece)`` in order.

        The pieces tile the output without overlap (see ``plan_chunks``); only one chunk is decoded
        at a time, so memory stays bounded whatever the length. Fewer latents than one chunk are
        decoded in one piece. With ``trim`` (default), a decoder whose output is exactly local
        (SAME-S, see ``TransformerResampler.decode_halo``) decodes only each chunk's kept range plus
        that halo instead of the whole chunk: the same bits for 20-30% less work (the official
        overlap trims 16 latents per side, the receptive field is 6).
        """
        if latents.shape[-1] < chunk_size:
            yield 0, self.decode(latents)
            return
        ratio = self.downsampling_ratio
        halo = self.decoder.layers[3].decode_halo() if trim else None
        for span in plan_chunks(latents.shape[-1], chunk_size, overlap):
            start, end = span.start, span.start + span.size
            if halo is not None:
                grid = self.decoder.layers[3].pad_multiple  # keep the chunk grid of the official chunk
                start = max(start, start + (span.keep_start - halo - start) // grid * grid)
                end = min(end, span.keep_end + halo)
                end = min(span.start + span.size, start + -(-(end - start) // grid) * grid)
            audio = self.decode(latents[..., start:end])
            first, last = (span.keep_start - start) * ratio, (span.keep_end - start) * ratio
            yield span.keep_start * ratio, audio[..., first:last]

    def decode_audio(
        self,
        latents: torch.Tensor,
        chunked: bool = False,
        chunk_size: int = 128,
        overlap: int = 32,
        progress: Callable[[int, int], None] | None = None,
        trim: bool = True,
    ) -> torch.Tensor:
        """Decode, in overlapping chunks of ``chunk_size`` latents when ``chunked`` and the input is long enough.

        ``progress(done, total)`` is called after every chunk. Chunked output has exactly 4096 L samples.
        ``trim``: see :meth:`iter_decode_audio` (same output, less work; False decodes whole chunks).
        """
        if not chunked or latents.shape[-1] < chunk_size:
            audio = self.decode(latents)
            if progress is not None:
                progress(1, 1)
            return audio
        count = len(plan_chunks(latents.shape[-1], chunk_size, overlap))
        total_samples = latents.shape[-1] * self.downsampling_ratio
        output = None
        for done, (first, piece) in enumerate(self.iter_decode_audio(latents, chunk_size, overlap, trim), start=1):
            if output is None:
                output = piece.new_zeros(*piece.shape[:-1], total_samples)
            output[..., first : first + piece.shape[-1]] = piece
            if progress is not None:
                progress(done, count)
        return output
