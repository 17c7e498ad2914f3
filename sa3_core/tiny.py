"""Tiny random-weight SA3 checkpoints in the official on-disk layout.

They exist so that the whole path (loading, every generation mode, the ComfyUI nodes) can be exercised
without the gated real weights: the tests build one, and the demo falls back to one when the models
folder holds no real checkpoint. The output is noise, and every file says so in its metadata.

Layout written (the same as ``stabilityai/stable-audio-3-*``)::

    <folder>/model_config.json
    <folder>/model.safetensors          model.model.* (DiT), pretransform.model.* (SAME), conditioner.conditioners.*
    <folder>/t5gemma-b-b-ul2/           a 1-layer T5Gemma encoder (hidden 768) + a word-level tokenizer

:func:`write_tiny_single_files` turns such a folder into the Comfy-Org layout (a model file and a
``t5gemma_b_b_ul2.safetensors``-style text encoder file), so the single-file path can be exercised too.
"""

from __future__ import annotations

import copy
import json
import struct
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


# -- the Comfy-Org layout -----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    """One protobuf field (string/bytes, float or integer)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(value)


def tiny_sentencepiece_model() -> bytes:
    """A Gemma-style SentencePiece BPE model (serialised ModelProto) small enough for the 30-row tiny
    embedding: the four special pieces and a few pieces spelling "abcd"; other text maps to <unk>."""
    pieces = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2)]
    pieces += [(p, 1) for p in ["\u2581", "a", "b", "c", "d", "ab", "cd", "abcd", "\u2581abcd"]]
    data = b"".join(_field(1, _field(1, p) + _field(2, -float(i)) + _field(3, t)) for i, (p, t) in enumerate(pieces))
    trainer = _field(3, 2) + _field(35, 1) + _field(40, 3) + _field(41, 2) + _field(42, 1) + _field(43, 0)
    normalizer = _field(1, "identity") + _field(3, 0) + _field(4, 0)
    return data + _field(2, trainer) + _field(3, normalizer)


# Encoder fields in which the tiny T5Gemma differs from T5Gemma-b and that tensor shapes cannot tell.
_TINY_TEXT_ENCODER_FIELDS = ("query_pre_attn_scalar", "layer_types")


def write_tiny_single_files(folder: str | Path, model_file: str | Path,
                            text_encoder_file: str | Path) -> tuple[Path, Path]:
    """Write a tiny model folder (:func:`write_tiny_checkpoint`) in the Comfy-Org layout.

    ``model_file`` gets the folder's ``model.safetensors`` tensors with its ``model_config.json`` in the
    metadata (``sa3_model_config``); ``text_encoder_file`` the T5Gemma weights under ``model.encoder.*``,
    the ``spiece_model`` tokenizer bytes (:func:`tiny_sentencepiece_model`) and the encoder fields of
    ``_TINY_TEXT_ENCODER_FIELDS`` (``sa3_text_encoder_config``). Same weights as the folder; the tokenizer
    differs (the folder's is word-level), so prompts encode differently.
    """
    from safetensors.torch import load_file

    from .checkpoint import CONFIG_METADATA_KEY, TEXT_ENCODER_CONFIG_METADATA_KEY

    folder = Path(folder)
    model_file, text_encoder_file = Path(model_file), Path(text_encoder_file)
    raw_config = json.loads((folder / "model_config.json").read_text())
    save_file(load_file(str(folder / "model.safetensors")), str(model_file),
              metadata={"description": TINY_LABEL, CONFIG_METADATA_KEY: json.dumps(raw_config)})

    encoder_folder = folder / raw_config["model"]["conditioning"]["configs"][0]["config"]["subfolder"]
    encoder_config = json.loads((encoder_folder / "config.json").read_text())["encoder"]
    tensors = {"model." + k: v for k, v in load_file(str(encoder_folder / "model.safetensors")).items()}
    tensors["spiece_model"] = torch.frombuffer(bytearray(tiny_sentencepiece_model()), dtype=torch.uint8)
    fields = {name: encoder_config[name] for name in _TINY_TEXT_ENCODER_FIELDS}
    save_file(tensors, str(text_encoder_file),
              metadata={"description": TINY_LABEL, TEXT_ENCODER_CONFIG_METADATA_KEY: json.dumps(fields)})
    return model_file, text_encoder_file
