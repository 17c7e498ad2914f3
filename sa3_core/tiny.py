"""Tiny random-weight SA3 checkpoints in the official on-disk layout.

They exist so that the whole path (loading, every generation mode, the ComfyUI nodes) can be exercised
without the gated real weights: the tests build one, and the demo falls back to one when the models
folder holds no real checkpoint. The output is noise, and every file says so in its metadata.

Layout written (the same as ``stabilityai/stable-audio-3-*``)::

    <folder>/model_config.json
    <folder>/model.safetensors          model.model.* (DiT), pretransform.model.* (SAME), conditioner.conditioners.*
    <folder>/t5gemma-b-b-ul2/           a 1-layer T5Gemma encoder (hidden 768) + a word-level tokenizer
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ModelConfig

TINY_LABEL = "TINY RANDOM WEIGHTS - for tests and demos only, not a Stable Audio 3 model"

# Words the tiny tokenizer knows; anything else maps to <unk>.
_VOCAB = ["<pad>", "<eos>", "<bos>", "<unk>", "piano", "drums", "music", "loud", "soft", "bass", "synth",
          "ambient", "rain", "thunder", "guitar", "strings", "warm", "dark", "bright", "techno", "house",
          "jazz", "choir", "noise", "wind", "birds", "low", "high", "slow", "fast"]


def tiny_model_config(variant: str = "small") -> dict:
    """The real small or medium config, shrunk: DiT width 128 x 2 layers, SAME width 192 x 1-2 layers."""
    if variant not in ("small", "medium"):
        raise ValueError(f"unknown tiny variant {variant!r}: expected 'small' or 'medium'")
    presets = Path(__file__).parent / "presets"
    config = json.loads((presets / f"{variant}.json").read_text())
    config = copy.deepcopy(config)
    model = config["model"]
    dit = model["diffusion"]["config"]
    dit.update(embed_dim=128, depth=2, num_heads=2, num_memory_tokens=8)
    depth = 1 if variant == "small" else 2
    for side in ("encoder", "decoder"):
        same = model["pretransform"]["config"][side]["config"]
        same.update(channels=32, transformer_depths=[depth])
    if variant == "medium":
        model["pretransform"]["config"]["decoder"]["config"]["sinusoidal_blocks"] = [1]
    config["sample_size"] = 5292032  # 120 s, like the official generate() cap
    return config


def _write_text_encoder(folder: Path, seed: int) -> None:
    """A 1-layer T5Gemma encoder with the real hidden size (768) and a 30-word tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel

    folder.mkdir(parents=True, exist_ok=True)
    module = dict(hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
                  num_key_value_heads=12, head_dim=64, vocab_size=len(_VOCAB), layer_types=["sliding_attention"])
    config = T5GemmaConfig(encoder=module, decoder={**module, "is_decoder": True}, vocab_size=len(_VOCAB),
                           is_encoder_decoder=False)
    config.architectures = ["T5GemmaEncoderModel"]
    torch.manual_seed(seed)
    encoder = T5GemmaEncoderModel(config).eval()
    encoder.save_pretrained(folder, safe_serialization=True)

    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_VOCAB)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)


def write_tiny_checkpoint(folder: str | Path, variant: str = "small", seed: int = 0) -> Path:
    """Write a tiny random-weight model folder in the official layout and return its path.

    Every parameter is drawn from N(0, 0.02) (none left at the zero init the real code uses, so every
    branch of the network matters); RoPE ``inv_freq`` buffers keep their exact values.
    """
    from .checkpoint import build_modules  # built exactly as a real checkpoint would be

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw_config = tiny_model_config(variant)
    config = ModelConfig.from_dict(raw_config, source=f"tiny-{variant}")
    modules = build_modules(config, device=torch.device("cpu"), dtype=torch.float32)

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            if not name.endswith("inv_freq") and value.numel() > 0:
                value = torch.randn(value.shape, generator=generator) * 0.02
            tensors[prefix + name] = value.detach().contiguous().clone()

    save_file(tensors, str(folder / "model.safetensors"), metadata={"description": TINY_LABEL})
    (folder / "model_config.json").write_text(json.dumps(raw_config, indent=2))
    (folder / "TINY_RANDOM_WEIGHTS.txt").write_text(TINY_LABEL + "\n")
    _write_text_encoder(folder / raw_config["model"]["conditioning"]["configs"][0]["config"]["subfolder"], seed)
    return folder
