"""The T5Gemma text encoder SA3 conditions on: loading it offline, tokenizing and encoding prompts.

The prompt is encoded by a frozen T5Gemma-b encoder (768-dim, 256 tokens). Its weights are *not* part of the
SA3 checkpoint: they live in the ``t5gemma-b-b-ul2/`` folder next to the official config, or in the Comfy-Org
single file ``t5gemma_b_b_ul2.safetensors`` (encoder weights + SentencePiece bytes, read by
``sa3_core.checkpoint``). The learned conditioners that turn its output into the DiT's conditioning are in
``sa3_core.conditioners``.

Nothing here touches the network: transformers is always called with ``local_files_only=True``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import ops
from .tokenizer import TokenizerError, tokenizer_from_folder
from .validation import require_finite

logger = logging.getLogger(__name__)


class TextEncoderError(ValueError):
    """A text encoder (folder, weights or tokenizer) we cannot load."""


# --------------------------------------------------------------------------------------------------
# T5Gemma encoder
# --------------------------------------------------------------------------------------------------

# google/t5gemma-b-b-ul2, encoder side. Shapes (vocab, width, depth, heads) are read from the weights
# when a file carries no config; these are the values shapes cannot tell. Sources: the official MLX
# port's constants and ComfyUI's SA3 text encoder agree on all of them (scale 64^-0.5, softcap 50).
T5GEMMA_B_ENCODER: dict[str, Any] = {
    "head_dim": 64,
    "query_pre_attn_scalar": 64,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,  # transformers 5.x turns it into rope_parameters, 4.x reads it as it is
    "hidden_activation": "gelu_pytorch_tanh",
    "sliding_window": 4096,
    "max_position_embeddings": 8192,
    "attention_bias": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}


def t5gemma_encoder_config(
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    **overrides: Any,
):
    """An encoder-only ``T5GemmaConfig`` for the given sizes, other fields as in T5Gemma-b.

    ``overrides`` replace any encoder field (e.g. ``query_pre_attn_scalar`` or ``layer_types``).
    """
    from transformers import T5GemmaConfig

    module = {
        **T5GEMMA_B_ENCODER,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        # Alternating local/global attention; at 256 tokens the 4096 window never bites.
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_hidden_layers)],
    }
    module.update(overrides)
    # T5GemmaConfig insists on a decoder description even for the encoder-only model; it builds nothing.
    config = T5GemmaConfig(
        encoder=module,
        decoder={**module, "is_decoder": True},
        vocab_size=module["vocab_size"],
        is_encoder_decoder=False,
    )
    config.architectures = ["T5GemmaEncoderModel"]
    return config


class T5GemmaTextEncoder:
    """T5Gemma encoder + tokenizer: prompts -> ``(hidden (B, 256, 768), mask (B, 256) bool)``.

    A plain object holding a transformers ``T5GemmaEncoderModel`` (``.model``, in eval mode, no grad)
    and its tokenizer (``.tokenizer``), on an explicit device and dtype. Tokenisation is the official
    one: ``truncation=True, max_length=256, padding="max_length"``.

    Caching: the last ``cache_size`` distinct prompts are kept (per prompt, on the model's device), so
    encoding the same prompt again - the empty negative prompt, a re-run with a new seed - does not run
    the encoder. A prompt's encoding does not depend on the rest of the batch (every row is padded to
    the same length), so per-prompt caching returns what a batched call would. ``to()`` clears it.

    Weight storage: the model's ``nn.Linear`` / ``nn.Embedding`` layers become the casting layers of
    :mod:`sa3_core.ops` (same parameters, same results), so ``weight_dtype`` (e.g. float8) can store their
    weights (converted here, one matrix at a time) while the encoder computes in its other parameters'
    dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 256,
        cache_size: int = 16,
        weight_dtype: torch.dtype | None = None,
    ):
        hidden = model.config.encoder.hidden_size
        if hidden != 768:
            raise TextEncoderError(f"expected a T5Gemma-b encoder with hidden size 768, got {hidden}")
        self.model = ops.store_weights(model.eval().requires_grad_(False), weight_dtype)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
        weight_dtype: torch.dtype | None = None,
        max_length: int = 256,
        cache_size: int = 16,
    ) -> T5GemmaTextEncoder:
        """Load an HF-format T5Gemma folder (``config.json``, safetensors weights, tokenizer files) offline.

        Weights must be safetensors (pickle files are refused, never loaded). Every encoder weight must be
        present with the right shape; decoder weights, when the folder holds the full encoder-decoder
        model as the official ``t5gemma-b-b-ul2/`` does, are ignored.
        """
        from transformers import T5GemmaEncoderModel

        folder = Path(folder)
        config = t5gemma_folder_config(folder)
        try:
            tokenizer = tokenizer_from_folder(folder)
        except TokenizerError as exc:
            raise TextEncoderError(f"{folder}: cannot load the T5Gemma tokenizer ({exc})") from None
        try:
            model, info = T5GemmaEncoderModel.from_pretrained(
                folder,
                config=config,
                local_files_only=True,
                use_safetensors=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, by name
                **_load_options(dtype),
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise TextEncoderError(f"{folder}: cannot load the T5Gemma encoder weights ({exc})") from None
        _raise_on_incomplete_load(info, str(folder))
        _raise_on_non_finite(model, str(folder))
        return cls(model.to(device), tokenizer, max_length=max_length, cache_size=cache_size, weight_dtype=weight_dtype)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        tokenizer: Any,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
        source: str,
        weight_dtype: torch.dtype | None = None,
        max_length: int = 256,
        cache_size: int = 16,
        **config_overrides: Any,
    ) -> T5GemmaTextEncoder:
        """Build the encoder from weights with transformers' names (``encoder.*``) and a tokenizer.

        The architecture is read from the tensor shapes (see :func:`t5gemma_encoder_config`);
        ``config_overrides`` set encoder fields shapes cannot tell. Used for the Comfy-Org single file.
        """
        from transformers import T5GemmaEncoderModel

        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        sizes = t5gemma_encoder_sizes(shapes, source, config_overrides.get("head_dim", 64))
        config = t5gemma_encoder_config(**sizes, **config_overrides)
        try:
            model, info = T5GemmaEncoderModel.from_pretrained(
                None,
                config=config,
                state_dict=dict(state_dict),
                local_files_only=True,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, by name
                **_load_options(dtype),
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise TextEncoderError(f"{source}: cannot build the T5Gemma encoder ({exc})") from None
        _raise_on_incomplete_load(info, source)
        return cls(model.to(device), tokenizer, max_length=max_length, cache_size=cache_size, weight_dtype=weight_dtype)

    # -- device / dtype ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.encoder.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the encoder computes in (its weights may be stored in another, see ``weight_dtype``)."""
        return self.model.encoder.embed_tokens.compute_dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> T5GemmaTextEncoder:
        """Move (and cast: every weight, a float8 storage too) the encoder."""
        self.model.to(device=device, dtype=dtype)
        if dtype is not None:
            self.model.encoder.embed_tokens.compute_dtype = dtype
        self.clear_cache()
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- encoding ----------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, max_length), padded and truncated as the official code does.

        A prompt longer than ``max_length`` tokens is cut silently by the tokenizer; a warning says so (the
        length is counted again only for prompts that fill every position, the only ones that can be cut)."""
        encoded = self.tokenizer(
            list(prompts), truncation=True, max_length=self.max_length, padding="max_length", return_tensors="pt"
        )
        mask = encoded["attention_mask"].to(torch.bool)
        for prompt, row in zip(prompts, mask):
            if row.all():
                tokens = len(self.tokenizer(prompt, truncation=False)["input_ids"])
                if tokens > self.max_length:
                    logger.warning(
                        "a prompt of %d tokens (%d characters) is longer than the %d tokens the text "
                        "encoder reads: only its beginning is used (%r...)",
                        tokens,
                        len(prompt),
                        self.max_length,
                        prompt[:40],
                    )
        return encoded["input_ids"], mask

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``last_hidden_state`` (B, max_length, 768) in the encoder's dtype and the token mask (B, max_length) bool.

        Padded rows still hold the encoder's output there; ``sa3_core.conditioners.PromptConditioner`` replaces them.
        """
        prompts = [str(p) for p in prompts]
        rows = {p: self._cache[p] for p in prompts if p in self._cache}
        missing = [p for p in dict.fromkeys(prompts) if p not in rows]
        if missing:
            ids, mask = self.tokenize(missing)
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            # Clones, so a cached row does not keep the whole batch alive.
            rows.update({p: (hidden[i].clone(), mask[i].clone()) for i, p in enumerate(missing)})
        for prompt in dict.fromkeys(prompts):
            self._remember(prompt, rows[prompt])
        return torch.stack([rows[p][0] for p in prompts]), torch.stack([rows[p][1] for p in prompts])

    def _remember(self, prompt: str, row: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[prompt] = row
        self._cache.move_to_end(prompt)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def t5gemma_folder_config(folder: Path):
    """The encoder-only ``T5GemmaConfig`` of an HF T5Gemma folder (its ``config.json``), read offline."""
    from transformers import AutoConfig

    if not folder.is_dir():
        raise TextEncoderError(f"{folder}: T5Gemma text encoder folder not found")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"{folder}: cannot read the T5Gemma config.json ({exc})") from None
    if getattr(config, "model_type", None) != "t5gemma":
        raise TextEncoderError(f"{folder}/config.json: model_type {config.model_type!r} is not 't5gemma'")
    config.is_encoder_decoder = False  # as the official conditioner: build the encoder only
    return config


def t5gemma_encoder_sizes(shapes: Mapping[str, Sequence[int]], source: str, head_dim: int = 64) -> dict[str, int]:
    """The sizes of a T5Gemma encoder read from its tensor shapes (transformers names, ``encoder.*``)."""
    try:
        vocab, hidden = shapes["encoder.embed_tokens.weight"]
        intermediate = shapes["encoder.layers.0.mlp.gate_proj.weight"][0]
        q_out = shapes["encoder.layers.0.self_attn.q_proj.weight"][0]
        kv_out = shapes["encoder.layers.0.self_attn.k_proj.weight"][0]
    except (KeyError, ValueError, IndexError) as exc:
        raise TextEncoderError(f"{source}: not a T5Gemma encoder (no usable tensor {exc})") from None
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("encoder.layers.")}
    if layers != set(range(len(layers))):
        raise TextEncoderError(f"{source}: T5Gemma encoder layers are not numbered 0..N-1: {sorted(layers)}")
    if q_out % head_dim or kv_out % head_dim:
        raise TextEncoderError(f"{source}: attention width {q_out} is not a multiple of head_dim {head_dim}")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": len(layers),
        "num_attention_heads": q_out // head_dim,
        "num_key_value_heads": kv_out // head_dim,
    }


def _raise_on_non_finite(model: nn.Module, source: str) -> None:
    """Weights transformers loaded from a folder must be finite (single files are checked as they are read)."""
    for name, tensor in model.state_dict().items():
        require_finite(
            tensor,
            f"{source}: T5Gemma weight {name} holds NaN or infinite values; the file is damaged",
            TextEncoderError,
        )


def _load_options(dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` options that mean the same on transformers 4.53 ... 5.x.

    - the dtype: ``dtype=`` since 4.56, ``torch_dtype=`` before (4.56 deprecated it);
    - eager attention: T5Gemma soft-caps its attention logits (50), which SDPA cannot do. transformers 5.x
      builds T5Gemma with eager attention for that reason; 4.x picks SDPA and silently skips the softcap.
    """
    from packaging.version import Version
    from transformers import __version__

    dtype_key = "dtype" if Version(__version__) >= Version("4.56") else "torch_dtype"
    return {dtype_key: dtype, "attn_implementation": "eager"}


def _raise_on_incomplete_load(info: Mapping[str, Any], source: str) -> None:
    """transformers only warns about missing weights (and initialises them randomly); we refuse."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(
        f"{m[0]} {list(m[1])} (expected {list(m[2])})" if isinstance(m, (tuple, list)) and len(m) == 3 else str(m)
        for m in info.get("mismatched_keys") or []
    )
    errors = list(info.get("error_msgs") or [])
    if missing or mismatched or errors:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing[:10])}")
        if mismatched:
            parts.append(f"{len(mismatched)} with a different shape: {', '.join(mismatched[:10])}")
        if errors:
            parts.append("; ".join(errors[:3]))
        raise TextEncoderError(f"{source}: incomplete T5Gemma encoder weights ({'; '.join(parts)})")


# --------------------------------------------------------------------------------------------------
# Comfy-Org single file (t5gemma_b_b_ul2.safetensors)
# --------------------------------------------------------------------------------------------------

# The file stores the encoder under ComfyUI's module path ``model.encoder.*`` (the same names the
# encoder has inside transformers' T5GemmaForConditionalGeneration) and the tokenizer as a uint8
# tensor ``spiece_model`` holding a serialized SentencePiece model.
COMFY_ENCODER_PREFIX = "model.encoder."
COMFY_SPIECE_KEY = "spiece_model"
# Parts of the encoder-decoder model that a file may carry and the encoder never uses.
COMFY_IGNORED_PREFIXES = ("model.decoder.", "lm_head.")


def comfy_key_to_transformers(key: str) -> str | None:
    """``model.encoder.X`` -> ``encoder.X`` (transformers' T5GemmaEncoderModel); None for other keys."""
    if key.startswith(COMFY_ENCODER_PREFIX):
        return "encoder." + key[len(COMFY_ENCODER_PREFIX) :]
    return None


def transformers_key_to_comfy(key: str) -> str:
    """``encoder.X`` -> ``model.encoder.X``: the inverse of :func:`comfy_key_to_transformers`."""
    return "model." + key
