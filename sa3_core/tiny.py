"""Tiny random-weight SA3 checkpoints in the official on-disk layout.

They exist so that the whole path (loading, every generation mode, the ComfyUI nodes) can be exercised
without the gated real weights: the tests build one, and the demo falls back to one when the models
folder holds no real checkpoint. The output is noise, and every file says so in its metadata.

The weights are random but scaled so that every stage matters, after the strict golden fixtures' recipe
(``../shared/fixtures/strict/README.md``, "Weights"; ``_INIT_RULES`` below): the decoded audio follows the
latents (SAME matrices N(0, 1/fan_in), sharp attention, weight-norm magnitudes that give an audio rms of
~0.1 for small, ~0.4 for medium), and the DiT's velocity follows the timestep, the prompt, the duration and
the inpaint input (O(1) adaLN modulation and timestep embedding, conditioning matrices of gain 1). Two seeds
give audio that differs by ~0.8 of its RMS, so a test comparing outputs of the tiny model sees a wrong seed,
prompt, mask or LoRA (tests/core/test_tiny.py). What a random DiT cannot do is denoise: at init noise level
0.9 the sampler keeps almost nothing of the init audio (1e-6), at 0.2 a few percent.

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
import re
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ModelConfig

TINY_LABEL = "TINY RANDOM WEIGHTS - for tests and demos only, not a Stable Audio 3 model"

# Words the tiny tokenizer knows; anything else maps to <unk>.
_VOCAB = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "piano",
    "drums",
    "music",
    "loud",
    "soft",
    "bass",
    "synth",
    "ambient",
    "rain",
    "thunder",
    "guitar",
    "strings",
    "warm",
    "dark",
    "bright",
    "techno",
    "house",
    "jazz",
    "choir",
    "noise",
    "wind",
    "birds",
    "low",
    "high",
    "slow",
    "fast",
]

# How each tensor is drawn; the first pattern matching its checkpoint key wins. Kinds:
#   ("matrix", g)           N(0, g^2 / fan_in), fan_in = in_features (x kernel size)
#   ("qk_rows", g_v, g_qk)  an attention projection: value rows of gain g_v, query/key rows of gain g_qk
#   ("normal", mean, std)   ("uniform", low, high)   ("keep",): the value the module was built with
# The gains follow the strict golden fixtures' recipe; what each group makes matter is said beside it.
_INIT_RULES: tuple[tuple[str, tuple], ...] = (
    (r"inv_freq$", ("keep",)),  # RoPE frequencies: the standard values, as in real checkpoints
    # DiT (model.model.*)
    (r"to_timestep_embed\.0\.weight$", ("matrix", 2.0)),  # the velocity changes by O(1) between t = 0.1 and 0.9
    (r"to_timestep_embed\.0\.bias$", ("normal", 0.0, 0.5)),
    (r"to_timestep_embed\.2\.weight$", ("matrix", 1.5)),
    (r"to_timestep_embed\.2\.bias$", ("normal", 0.0, 0.3)),
    (r"to_(cond|global)_embed\.0\.weight$", ("matrix", 1.0)),  # prompt and duration reach the velocity
    (r"to_(cond|global)_embed\.2\.weight$", ("matrix", 1.5)),
    (r"global_cond_embedder\.0\.weight$", ("matrix", 1.5)),  # adaLN scale/shift/gate O(1), following t and seconds
    (r"global_cond_embedder\.2\.weight$", ("matrix", 2.0)),
    (r"global_cond_embedder\.\d\.bias$", ("normal", 0.0, 0.3)),
    (r"to_scale_shift_gate$", ("normal", 0.0, 0.5)),
    (r"transformer\.memory_tokens$", ("normal", 0.0, 1.0)),
    (r"transformer\.project_in\.weight$", ("matrix", 0.004)),  # a small residual stream: the norm eps matters
    (r"transformer\.project_out\.weight$", ("matrix", 0.06)),  # velocity rms 1-2
    (r"model\.model\..*self_attn\.to_qkv\.weight$", ("qk_rows", 1.0, 0.002)),  # q/k small: the q/k norm eps matters
    (r"model\.model\..*cross_attn\.to_q\.weight$", ("matrix", 0.002)),
    (r"model\.model\..*cross_attn\.to_kv\.weight$", ("qk_rows", 1.0, 0.002)),
    (r"model\.model\..*cross_attn\.to_out\.weight$", ("matrix", 1.5)),
    (r"model\.model\..*\.[qk]_norm\.gamma$", ("normal", 1.5, 0.3)),
    (r"model\.model\..*norm\.gamma$", ("normal", 1.0, 0.3)),  # pre / cross / ff RMSNorm: no gain is 1
    (r"to_local_embed\.0\.bias$", ("normal", 0.0, 1.0)),  # the always-on inpaint branch adds W2 silu(b0) + b2
    (r"to_local_embed\.2\.bias$", ("normal", 0.0, 0.3)),
    (r"(pre|post)process_conv\.weight$", ("matrix", 0.5)),
    # SAME (pretransform.model.*): the decoded audio follows the latents, attention across latents matters
    (r"pretransform\..*self_attn\.to_qkv\.weight$", ("matrix", 3.0)),
    (r"pretransform\..*self_attn\.to_out\.weight$", ("matrix", 2.0)),
    (r"decoder\.layers\.1\.weight$", ("matrix", 2.0)),  # the latent projection
    # q/k norm gains > 1 make attention sharp enough that the latents (decoder) and the audio (encoder) dominate
    # what the learned tokens receive: most of the decoded audio follows the latents (~85 %, ~45 % at gain 1).
    (r"pretransform\..*\.[qk]_norm\.gamma$", ("normal", 2.5, 0.3)),
    (r"encoder\.layers\.0\.mapping\.weight_g$", ("uniform", 0.8, 1.2)),  # weight-norm magnitudes
    (r"decoder\.layers\.3\.mapping\.weight_g$", ("uniform", 0.05, 0.1)),  # audio rms ~0.2, little clipping
    (r"\.alpha$", ("uniform", 0.5, 1.5)),  # DyT norms
    (r"pretransform\..*\.gamma$", ("normal", 1.0, 0.2)),
    (r"pretransform\..*\.beta$", ("normal", 0.0, 0.1)),
    (r"new_tokens$", ("normal", 0.0, 0.5)),
    (r"bottleneck\.scaling_factor$", ("normal", 1.0, 0.1)),
    (r"bottleneck\.bias$", ("normal", 0.0, 0.1)),
    (r"bottleneck\.running_std$", ("uniform", 1.1, 1.4)),
    # conditioners (conditioner.conditioners.*)
    (r"prompt\.padding_embedding$", ("normal", 0.0, 0.7)),  # most of the 256 prompt rows are padding
    (r"seconds_total\.embedder\.embedding\.1\.weight$", ("matrix", 1.5)),  # 1 s more is an O(1) change
    (r"seconds_total\.embedder\.embedding\.1\.bias$", ("normal", 0.0, 0.2)),
    # everything else: matrices of gain 1, small biases
    (r"\.bias$", ("normal", 0.0, 0.05)),
    (r"weight(_v)?$", ("matrix", 1.0)),
)

# The T5Gemma encoder: matrices of gain 1; its token embeddings are scaled by sqrt(768) inside, and Gemma norms
# compute x (1 + w).
_TEXT_ENCODER_RULES: tuple[tuple[str, tuple], ...] = (
    (r"embed_tokens\.weight$", ("normal", 0.0, 0.04)),
    (r"norm\.weight$", ("normal", 0.0, 0.2)),
    (r"weight$", ("matrix", 1.0)),
)


def _query_key_rows(key: str, rows: int, differential: bool) -> torch.Tensor:
    """(rows,) bool, True on the query/key rows of an attention projection (see ``layers.Attention``)."""
    if key.endswith("to_qkv.weight"):
        layout = "qkvqk" if differential else "qkv"
    else:  # cross-attention to_kv
        layout = "kkv" if differential else "kv"
    size = rows // len(layout)
    return torch.tensor([part != "v" for part in layout]).repeat_interleave(size)


def _draw(key: str, value: torch.Tensor, rules, generator: torch.Generator, differential: bool) -> torch.Tensor:
    """A fresh tensor for checkpoint ``key`` (shape and dtype of ``value``) by the first matching rule."""
    if value.numel() == 0:  # the bottleneck's empty noise_scaling_factor
        return value.detach().clone()
    rule = next((rule for pattern, rule in rules if re.search(pattern, key)), None)
    if rule is None:
        raise ValueError(f"no initialisation rule for {key}")
    kind, *args = rule
    shape = value.shape
    if kind == "keep":
        return value.detach().clone()
    if kind == "normal":
        return args[0] + args[1] * torch.randn(shape, generator=generator)
    if kind == "uniform":
        return args[0] + (args[1] - args[0]) * torch.rand(shape, generator=generator)
    fan_in = shape[1:].numel()
    unit = torch.randn(shape, generator=generator) / fan_in**0.5
    if kind == "matrix":
        return unit * args[0]
    if kind == "qk_rows":
        gains = torch.where(_query_key_rows(key, shape[0], differential), args[1], args[0])
        return unit * gains.view(-1, *[1] * (len(shape) - 1))
    raise ValueError(f"unknown initialisation kind {kind!r}")


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


def _write_text_encoder(folder: Path, generator: torch.Generator) -> None:
    """A 1-layer T5Gemma encoder with the real hidden size (768) and a 30-word tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel

    folder.mkdir(parents=True, exist_ok=True)
    module = dict(
        hidden_size=768,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=12,
        num_key_value_heads=12,
        head_dim=64,
        vocab_size=len(_VOCAB),
        layer_types=["sliding_attention"],
    )
    config = T5GemmaConfig(
        encoder=module, decoder={**module, "is_decoder": True}, vocab_size=len(_VOCAB), is_encoder_decoder=False
    )
    config.architectures = ["T5GemmaEncoderModel"]
    with torch.random.fork_rng(devices=[]):  # transformers' own init draws from the global RNG: leave it as it was
        encoder = T5GemmaEncoderModel(config).eval()
    with torch.no_grad():
        for key, param in encoder.state_dict().items():
            param.copy_(_draw(key, param, _TEXT_ENCODER_RULES, generator, differential=False))
    encoder.save_pretrained(folder, safe_serialization=True)

    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_VOCAB)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)


def write_tiny_checkpoint(folder: str | Path, variant: str = "small", seed: int = 0) -> Path:
    """Write a tiny random-weight model folder in the official layout and return its path.

    Every tensor is drawn from one ``torch.Generator`` seeded with ``seed`` (the same seed gives the same
    files; the global RNG is left alone) by the per-group rules above (``_INIT_RULES``); none is left at the
    zero init the real code uses, so every branch of the network matters. RoPE ``inv_freq`` buffers keep
    their exact values.
    """
    from .checkpoint import build_modules  # built exactly as a real checkpoint would be

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw_config = tiny_model_config(variant)
    config = ModelConfig.from_dict(raw_config, source=f"tiny-{variant}")
    with torch.random.fork_rng(devices=[]):  # module constructors draw default inits from the global RNG
        modules = build_modules(config, device=torch.device("cpu"), dtype=torch.float32)

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for name, value in module.state_dict().items():
            key = prefix + name
            tensors[key] = _draw(key, value, _INIT_RULES, generator, config.dit.differential).contiguous()

    save_file(tensors, str(folder / "model.safetensors"), metadata={"description": TINY_LABEL})
    (folder / "model_config.json").write_text(json.dumps(raw_config, indent=2))
    (folder / "TINY_RANDOM_WEIGHTS.txt").write_text(TINY_LABEL + "\n")
    _write_text_encoder(folder / raw_config["model"]["conditioning"]["configs"][0]["config"]["subfolder"], generator)
    return folder


# -- the Comfy-Org layout -----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # protobuf writes negative integers as 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | float | bytes | str) -> bytes:
    """One protobuf field (string/bytes, float or integer)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3) + _varint(value)


# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def sentencepiece_model_bytes(
    pieces: list[tuple[str, int]], *, model_type: int = 2, add_dummy_prefix: bool = False, normalizer: str = "identity"
) -> bytes:
    """A serialised SentencePiece ModelProto, Gemma-style by default (BPE, no dummy prefix, identity
    normalisation, pad/eos/bos/unk ids 0-3): ``pieces`` as (piece, type), scored -index (merge rank)."""
    out = b"".join(
        _field(1, _field(1, piece) + _field(2, -float(i)) + _field(3, kind)) for i, (piece, kind) in enumerate(pieces)
    )
    trainer = (
        _field(3, model_type)
        + _field(4, len(pieces))
        + _field(35, 1)
        + _field(40, 3)
        + _field(41, 2)
        + _field(42, 1)
        + _field(43, 0)
    )
    norm = _field(1, normalizer) + _field(3, int(add_dummy_prefix)) + _field(4, 0) + _field(5, 1)
    return out + _field(2, trainer) + _field(3, norm)


def tiny_sentencepiece_model() -> bytes:
    """A Gemma-style SentencePiece BPE model small enough for the 30-row tiny embedding: the four special
    pieces and a few pieces spelling "abcd"; other text maps to <unk>."""
    pieces = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN)]
    pieces += [(p, NORMAL) for p in ["\u2581", "a", "b", "c", "d", "ab", "cd", "abcd", "\u2581abcd"]]
    return sentencepiece_model_bytes(pieces)


# Encoder fields in which the tiny T5Gemma differs from T5Gemma-b and that tensor shapes cannot tell.
_TINY_TEXT_ENCODER_FIELDS = ("query_pre_attn_scalar", "layer_types")


def write_tiny_single_files(
    folder: str | Path, model_file: str | Path, text_encoder_file: str | Path
) -> tuple[Path, Path]:
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
    save_file(
        load_file(str(folder / "model.safetensors")),
        str(model_file),
        metadata={"description": TINY_LABEL, CONFIG_METADATA_KEY: json.dumps(raw_config)},
    )

    encoder_folder = folder / raw_config["model"]["conditioning"]["configs"][0]["config"]["subfolder"]
    encoder_config = json.loads((encoder_folder / "config.json").read_text())["encoder"]
    tensors = {"model." + k: v for k, v in load_file(str(encoder_folder / "model.safetensors")).items()}
    tensors["spiece_model"] = torch.frombuffer(bytearray(tiny_sentencepiece_model()), dtype=torch.uint8)
    fields = {name: encoder_config[name] for name in _TINY_TEXT_ENCODER_FIELDS}
    save_file(
        tensors,
        str(text_encoder_file),
        metadata={"description": TINY_LABEL, TEXT_ENCODER_CONFIG_METADATA_KEY: json.dumps(fields)},
    )
    return model_file, text_encoder_file
