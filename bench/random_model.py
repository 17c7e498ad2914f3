"""A StableAudioModel with random weights at the real small-music / medium shapes, built in memory.

No checkpoint is written or read: the modules come from ``checkpoint.build_modules`` on the ``meta``
device (no memory) and are then materialised once with random values. Weights are scaled like a trained
network's (unit-norm rows, norm scales 1), so activations stay in the normal float range: tiny or huge
values (denormals, infs) would make CPU timings unrepresentative.

Text encoder: by default the REAL-SIZE T5Gemma-b encoder (12 layers, hidden 768, 12 heads of 64, MLP 2048,
vocabulary 256 000: the official t5gemma-b-b-ul2 config) with random weights, so text-encode timings are real.
Its tokenizer is a small word-level one (real SentencePiece files are not available offline); the
encoder always sees 256 tokens (padding="max_length"), so the cost does not depend on the tokenizer.
``text_encoder="tiny"`` gives a 1-layer encoder instead (for quick runs; its timings are not real).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sa3_core.checkpoint import (
    AUTOENCODER_PREFIX,
    CONDITIONER_PREFIX,
    DIT_PREFIX,
    SA3Components,
    build_modules,
    preset_config,
)
from sa3_core.layers import DyT, RotaryEmbedding
from sa3_core.ops import store_weights
from sa3_core.pipeline import StableAudioModel
from sa3_core.same import WeightNormConv1d
from sa3_core.t5gemma import T5GemmaTextEncoder, t5gemma_encoder_config

# The real T5Gemma-b encoder (the official t5gemma-b-b-ul2 config); everything else comes from T5GEMMA_B_ENCODER.
T5GEMMA_B_SIZES = dict(
    vocab_size=256_000,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
)
_WORDS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "warm",
    "ambient",
    "piano",
    "with",
    "soft",
    "drums",
    "and",
    "a",
    "slow",
    "bass",
    "line",
    "bright",
    "synth",
    "pads",
    "house",
    "beat",
]


@torch.no_grad()
def randomise_(module: nn.Module, generator: torch.Generator, device: torch.device | str) -> nn.Module:
    """Give a ``meta`` module real random storage on ``device``, in place, one tensor at a time.

    Matrices (Linear, Conv1d, embeddings, learned tokens) get N(0, 1/fan_in); norm scales 1; DyT alphas 1;
    biases, shifts and gates 0; weight-norm gains 1 (unit-norm rows); RoPE tables their exact values.
    """
    module.to_empty(device=device)
    for sub in module.modules():
        if isinstance(sub, RotaryEmbedding):
            dim = 2 * sub.inv_freq.numel()
            exact = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            sub.inv_freq.copy_(exact)
        for name, param in sub.named_parameters(recurse=False):
            if isinstance(sub, WeightNormConv1d) and name == "weight_g":
                param.fill_(1.0)
            elif isinstance(sub, DyT) and name == "alpha":
                param.fill_(1.0)
            elif param.dim() >= 2 and param.numel() > 0:
                fan_in = max(1, param[0].numel())
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif name in ("gamma", "scaling_factor", "running_std"):
                param.fill_(1.0)
            else:  # biases, DyT beta, adaLN gates, Gemma norm weights (which scale by 1 + w)
                param.zero_()
    return module.eval().requires_grad_(False)


def word_tokenizer():
    """A small in-memory word-level tokenizer (unknown words -> <unk>); see the module docstring."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def random_text_encoder(
    size: str,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    generator: torch.Generator,
    weight_dtype: torch.dtype | None = None,
) -> T5GemmaTextEncoder:
    """``size="real"``: T5Gemma-b encoder shapes; ``"tiny"``: 1 layer, MLP 64 (hidden stays 768)."""
    from transformers import T5GemmaEncoderModel

    sizes = dict(T5GEMMA_B_SIZES)
    if size == "tiny":
        sizes.update(intermediate_size=64, num_hidden_layers=1)
    elif size != "real":
        raise ValueError(f"text encoder size must be 'real' or 'tiny', got {size!r}")
    config = t5gemma_encoder_config(**sizes)
    with torch.device("meta"):
        model = T5GemmaEncoderModel(config)
    model = randomise_(model, generator, device).to(dtype)
    # The rotary table is a non-persistent buffer computed at init; to_empty left it uninitialised.
    for sub in model.modules():
        if type(sub).__name__ == "T5GemmaRotaryEmbedding":
            exact = type(sub)(sub.config)  # tiny: only the table
            sub.inv_freq.copy_(exact.inv_freq)
            sub.original_inv_freq.copy_(exact.original_inv_freq)
    return T5GemmaTextEncoder(model, word_tokenizer(), weight_dtype=weight_dtype)


def random_model(
    variant: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    autoencoder_dtype: torch.dtype | None = None,
    weight_dtype: torch.dtype | None = None,
    text_encoder: str = "real",
    attention_backend: str = "auto",
    seed: int = 0,
) -> StableAudioModel:
    """The post-trained ``variant`` ("small" = small-music, or "medium") with random weights.

    The same seed gives the same weights whatever the dtypes: they are drawn in float32 and then cast
    (``autoencoder_dtype``: SAME's, default ``dtype``; ``weight_dtype``: float8 storage of the DiT's and
    the text encoder's weight matrices, see sa3_core.ops), one module at a time."""
    config = preset_config(variant)
    generator = torch.Generator().manual_seed(seed)  # a CPU generator: weights are drawn on the CPU, then moved
    modules = build_modules(config, device="meta", dtype=torch.float32, attention_backend=attention_backend)
    # One module at a time, each cast (and the DiT's matrices stored) before the next is drawn: the peak is
    # one module in fp32, not the whole model.
    dit = randomise_(modules[DIT_PREFIX], generator, "cpu").to(device=device, dtype=dtype)
    if weight_dtype is not None:
        store_weights(dit, weight_dtype)
        dit.compute_dtype = dtype
    autoencoder = randomise_(modules[AUTOENCODER_PREFIX], generator, "cpu").to(
        device=device, dtype=autoencoder_dtype or dtype
    )
    conditioners = randomise_(modules[CONDITIONER_PREFIX], generator, "cpu").to(device=device, dtype=dtype)
    encoder = random_text_encoder(
        text_encoder, device="cpu", dtype=dtype, weight_dtype=weight_dtype, generator=generator
    )
    encoder.to(device)
    components = SA3Components(
        config=config,
        dit=dit,
        autoencoder=autoencoder,
        conditioners=conditioners,
        text_encoder=encoder,
        source=f"random weights ({variant}, real shapes)",
        layout="random",
    )
    return StableAudioModel(components, device=device, dtype=dtype)


def meta_model(variant: str, attention_backend: str = "auto") -> StableAudioModel:
    """The model on the ``meta`` device: no memory, no weights; for planning windows and counting FLOPs
    with exactly the pipeline's numbers (``plan_window`` etc.)."""
    config = preset_config(variant)
    modules = build_modules(config, device="meta", attention_backend=attention_backend)
    dit, autoencoder, conditioners = modules.values()
    components = SA3Components(
        config=config,
        dit=dit,
        autoencoder=autoencoder,
        conditioners=conditioners,
        text_encoder=None,
        source=f"meta ({variant})",
        layout="meta",
    )
    return StableAudioModel(components, device="meta", dtype=torch.float32)
