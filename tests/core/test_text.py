"""Prompt and duration conditioning: parity with the official conditioners, padding, caching, tokenizers."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa3_core.config import ModelConfig
from sa3_core.text import (
    Conditioners,
    PromptConditioner,
    SecondsConditioner,
    T5GemmaTextEncoder,
    TextEncoderError,
    comfy_key_to_transformers,
    parse_sentencepiece_model,
    tokenizer_from_sentencepiece,
    transformers_key_to_comfy,
)

PREFIX = "conditioner.conditioners."
TOLERANCE = 1e-4  # relative L2, the team-wide parity bound


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.fixture(params=["small", "medium"])
def variant(request) -> str:
    return request.param


def _conditioners(folder: Path) -> Conditioners:
    cfg = ModelConfig.from_json(folder / "model_config.json")
    conditioners = Conditioners(cfg.conditioning, device="cpu", dtype=torch.float32)
    tensors = load_file(str(folder / "model.safetensors"))
    conditioners.load_state_dict({k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}, strict=True)
    return conditioners.eval()


# -- parity with the official conditioner outputs ------------------------------------------------------


def test_conditioning_matches_official(fixtures_dir: Path, variant: str):
    folder = fixtures_dir / f"tiny-{variant}"
    case = json.loads((fixtures_dir / "components" / f"tiny-{variant}.json").read_text())
    expected = load_file(str(fixtures_dir / "components" / f"tiny-{variant}.safetensors"))
    prompts = [c["prompt"] for c in case["conditioning"]]
    seconds = [c["seconds_total"] for c in case["conditioning"]]

    encoder = T5GemmaTextEncoder.from_folder(folder / "t5gemma-b-b-ul2", device="cpu", dtype=torch.float32)
    hidden, mask = encoder.encode(prompts)
    out = _conditioners(folder)(hidden, mask, seconds)

    assert out.prompt_embeddings.shape == (3, 256, 768)
    assert rel_l2(out.prompt_embeddings, expected["prompt.embeddings"]) <= TOLERANCE
    assert torch.equal(out.prompt_mask, expected["prompt.mask"].bool())
    assert rel_l2(out.seconds_embeddings, expected["seconds_total.embeddings"]) <= TOLERANCE
    assert rel_l2(out.cross_attn_cond, expected["cross_attn_cond"]) <= TOLERANCE
    assert torch.equal(out.cross_attn_mask, expected["cross_attn_mask"].bool())
    assert rel_l2(out.global_cond, expected["global_cond"]) <= TOLERANCE


def test_conditioner_keys_are_checkpoint_keys(fixtures_dir: Path, variant: str):
    folder = fixtures_dir / f"tiny-{variant}"
    cfg = ModelConfig.from_json(folder / "model_config.json")
    ours = {k: tuple(v.shape) for k, v in Conditioners(cfg.conditioning, device="meta").state_dict().items()}
    file = load_file(str(folder / "model.safetensors"))
    theirs = {k[len(PREFIX):]: tuple(v.shape) for k, v in file.items() if k.startswith(PREFIX)}
    assert ours == theirs == {
        "prompt.padding_embedding": (768,),
        "seconds_total.embedder.embedding.1.weight": (768, 256),
        "seconds_total.embedder.embedding.1.bias": (768,),
    }


# -- conditioner behaviour ---------------------------------------------------------------------------


def test_learned_padding_replaces_only_padded_rows():
    conditioner = PromptConditioner(8)
    hidden = torch.randn(2, 5, 8)
    hidden[0, 3:] = float("nan")  # whatever the encoder left in padded rows must not leak
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out, out_mask = conditioner(hidden, mask)
    assert torch.equal(out[0, :3], hidden[0, :3])
    assert torch.equal(out[0, 3:], conditioner.padding_embedding.detach().expand(2, 8))
    assert torch.equal(out[1], conditioner.padding_embedding.detach().expand(5, 8))  # empty prompt
    assert torch.equal(out_mask, mask)


def test_prompt_output_takes_the_conditioner_dtype():
    conditioner = PromptConditioner(4, dtype=torch.float64)
    out, _ = conditioner(torch.randn(1, 3, 4, dtype=torch.float32), torch.ones(1, 3, dtype=torch.bool))
    assert out.dtype == torch.float64


def test_zero_padding_mode_has_no_parameter():
    conditioner = PromptConditioner(4, padding_mode="zero")
    assert list(conditioner.state_dict()) == []
    out, _ = conditioner(torch.full((1, 3, 4), float("nan")), torch.tensor([[True, False, False]]))
    assert torch.isnan(out[0, 0]).all() and torch.equal(out[0, 1:], torch.zeros(2, 4))


def test_seconds_are_clamped_to_the_conditioner_range():
    conditioner = SecondsConditioner(16, min_val=0, max_val=384)
    emb, mask = conditioner([384.0, 500.0, 0.0, -3.0, 10.0])
    assert emb.shape == (5, 1, 16) and mask.dtype == torch.bool and mask.all()
    assert torch.equal(emb[0], emb[1]) and torch.equal(emb[2], emb[3])
    assert not torch.equal(emb[4], emb[2])
    tensor_emb, _ = conditioner(torch.tensor([384.0, 500.0, 0.0, -3.0, 10.0]))
    assert torch.equal(tensor_emb, emb)


def test_batch_sizes_must_agree(fixtures_dir: Path):
    conditioners = _conditioners(fixtures_dir / "tiny-small")
    with pytest.raises(ValueError, match="2 prompts but 3 durations"):
        conditioners(torch.zeros(2, 256, 768), torch.ones(2, 256, dtype=torch.bool), [1.0, 2.0, 3.0])


# -- the text encoder --------------------------------------------------------------------------------


class _CountingModel(torch.nn.Module):
    """Wraps the HF encoder and counts forward calls (and the rows they encode)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.encoder = model.encoder
        self.rows = []

    def forward(self, **kwargs):
        self.rows.append(kwargs["input_ids"].shape[0])
        return self.inner(**kwargs)


def test_encoding_is_cached_per_prompt(fixtures_dir: Path):
    encoder = T5GemmaTextEncoder.from_folder(fixtures_dir / "tiny-small" / "t5gemma-b-b-ul2", device="cpu",
                                             dtype=torch.float32, cache_size=3)
    encoder.model = _CountingModel(encoder.model)
    first, first_mask = encoder.encode(["piano drums", "", "piano drums"])
    assert encoder.model.rows == [2]  # duplicates in one batch are encoded once
    again, again_mask = encoder.encode(["", "piano drums"])
    assert encoder.model.rows == [2]  # nothing recomputed
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    assert torch.equal(again_mask[1], first_mask[0])
    again[0].fill_(7.0)  # returned tensors are not the cache itself
    assert not torch.equal(encoder.encode([""])[0][0], again[0])

    encoder.encode(["warm bass", "dark synth"])  # evicts the least recently used prompt
    assert encoder.model.rows == [2, 2]
    encoder.encode(["piano drums"])
    assert encoder.model.rows == [2, 2, 1]
    encoder.to(dtype=torch.float64)  # moving or casting drops the cache
    assert encoder.encode(["piano drums"])[0].dtype == torch.float64
    assert encoder.model.rows == [2, 2, 1, 1]


def test_tokenization_is_the_official_one(fixtures_dir: Path):
    encoder = T5GemmaTextEncoder.from_folder(fixtures_dir / "tiny-small" / "t5gemma-b-b-ul2", device="cpu",
                                             dtype=torch.float32)
    ids, mask = encoder.tokenize(["piano drums", " ".join(["bass"] * 300)])
    assert ids.shape == mask.shape == (2, 256) and mask.dtype == torch.bool
    assert ids[0, :2].tolist() == [4, 5] and mask[0].sum() == 2 and (ids[0, 2:] == 0).all()
    assert mask[1].all()  # truncated to 256 tokens


def test_folder_loading_never_touches_the_network(fixtures_dir: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    encoder = T5GemmaTextEncoder.from_folder(fixtures_dir / "tiny-medium" / "t5gemma-b-b-ul2", device="cpu",
                                             dtype=torch.float32)
    hidden, mask = encoder.encode(["rain thunder"])
    assert hidden.shape == (1, 256, 768) and mask.sum() == 2


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(TextEncoderError, match="text encoder folder not found"):
        T5GemmaTextEncoder.from_folder(tmp_path / "nowhere", device="cpu", dtype=torch.float32)


def test_comfy_key_mapping():
    assert comfy_key_to_transformers("model.encoder.layers.3.mlp.up_proj.weight") == "encoder.layers.3.mlp.up_proj.weight"
    assert comfy_key_to_transformers("spiece_model") is None
    assert comfy_key_to_transformers("model.decoder.norm.weight") is None
    assert transformers_key_to_comfy("encoder.norm.weight") == "model.encoder.norm.weight"


# -- SentencePiece model bytes -> tokenizer ----------------------------------------------------------
#
# The model is written here with a minimal protobuf writer, in the layout of sentencepiece_model.proto.
# During development the same bytes were also loaded by the real `sentencepiece` library, which gives
# the ids asserted below; our reader needs neither sentencepiece nor protobuf.

NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | float | bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3 | 0) + _varint(value)


def spiece_model_bytes(pieces: list[tuple[str, int]], *, model_type: int = 2, add_dummy_prefix: bool = False,
                       normalizer: str = "identity") -> bytes:
    """A serialized SentencePiece ModelProto: pieces, trainer spec, normalizer spec (Gemma-style defaults)."""
    out = b""
    for i, (piece, kind) in enumerate(pieces):
        out += _field(1, _field(1, piece) + _field(2, -float(i)) + _field(3, kind))
    trainer = (_field(3, model_type) + _field(4, len(pieces)) + _field(35, 1)
               + _field(40, 3) + _field(41, 2) + _field(42, 1) + _field(43, 0))
    norm = _field(1, normalizer) + _field(3, int(add_dummy_prefix)) + _field(4, 0) + _field(5, 1)
    return out + _field(2, trainer) + _field(3, norm)


SPECIALS = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN)]
BYTES = [(f"<0x{b:02X}>", BYTE) for b in range(256)]
# Characters, then merges in rank order: p+i, a+n, an+o, pi+ano, d+r, u+m, um+s, dr+ums, ▁+drums.
WORDS = [(p, NORMAL) for p in ["▁", "a", "d", "i", "m", "n", "o", "p", "r", "s", "u",
                                 "pi", "an", "ano", "piano", "dr", "um", "ums", "drums", "▁drums"]]
GEMMA_STYLE = SPECIALS + BYTES + WORDS


def test_sentencepiece_model_is_parsed():
    model = parse_sentencepiece_model(spiece_model_bytes(GEMMA_STYLE))
    assert len(model.pieces) == 280 and model.pieces[:4] == ("<pad>", "<eos>", "<bos>", "<unk>")
    assert model.types[4] == BYTE and model.pieces[-1] == "▁drums"
    assert (model.model_type, model.byte_fallback, model.add_dummy_prefix) == (2, True, False)
    assert (model.pad_id, model.eos_id, model.bos_id, model.unk_id) == (0, 1, 2, 3)


def test_tokenizer_from_sentencepiece_bytes():
    tokenizer = tokenizer_from_sentencepiece(spiece_model_bytes(GEMMA_STYLE))
    piece_id = {p: i for i, (p, _) in enumerate(GEMMA_STYLE)}
    # Known words merge fully; the space becomes "▁" and sticks to the following word (no dummy prefix).
    assert tokenizer("piano drums")["input_ids"] == [piece_id["piano"], piece_id["▁drums"]]
    # Unknown characters fall back to UTF-8 bytes.
    assert tokenizer("zap")["input_ids"] == [4 + ord("z"), piece_id["a"], piece_id["p"]]
    assert tokenizer("é")["input_ids"] == [4 + 0xC3, 4 + 0xA9]
    batch = tokenizer(["piano", ""], truncation=True, max_length=4, padding="max_length")
    assert batch["input_ids"] == [[piece_id["piano"], 0, 0, 0], [0, 0, 0, 0]]  # right padding, pad id 0
    assert batch["attention_mask"] == [[1, 0, 0, 0], [0, 0, 0, 0]]
    with_specials = tokenizer_from_sentencepiece(spiece_model_bytes(GEMMA_STYLE), add_bos=True, add_eos=True)
    assert with_specials("piano")["input_ids"] == [2, piece_id["piano"], 1]


@pytest.mark.parametrize(
    "data, message",
    [
        (spiece_model_bytes(GEMMA_STYLE, model_type=1), "BPE"),
        (spiece_model_bytes(GEMMA_STYLE, add_dummy_prefix=True), "whitespace"),
        (spiece_model_bytes(GEMMA_STYLE, normalizer="nmt_nfkc"), "normalisation"),
        (b"\x0a\xff\xff\xff", "not a valid SentencePiece model"),
        (b"", "not a valid SentencePiece model"),
    ],
)
def test_unsupported_sentencepiece_models_are_refused(data: bytes, message: str):
    with pytest.raises(TextEncoderError, match=message):
        tokenizer_from_sentencepiece(data, source="t5gemma.safetensors:spiece_model")


def _text_encoder_copy(fixtures_dir: Path, tmp_path: Path, edit) -> Path:
    """The tiny T5Gemma folder with its weights edited (the fixture itself is never modified)."""
    source = fixtures_dir / "tiny-small" / "t5gemma-b-b-ul2"
    folder = tmp_path / "t5gemma"
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name != "model.safetensors":
            (folder / entry.name).symlink_to(entry)
    tensors = load_file(str(source / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_incomplete_encoder_weights_are_refused(fixtures_dir: Path, tmp_path: Path):
    """transformers would initialise a missing weight randomly and only warn; we refuse."""
    folder = _text_encoder_copy(fixtures_dir, tmp_path, lambda t: t.pop("encoder.layers.0.mlp.up_proj.weight"))
    with pytest.raises(TextEncoderError, match="1 missing: encoder.layers.0.mlp.up_proj.weight") as error:
        T5GemmaTextEncoder.from_folder(folder, device="cpu", dtype=torch.float32)
    assert str(folder) in str(error.value)


def test_wrong_shape_encoder_weights_are_refused(fixtures_dir: Path, tmp_path: Path):
    def damage(tensors):
        tensors["encoder.layers.0.mlp.up_proj.weight"] = torch.zeros(32, 768)

    folder = _text_encoder_copy(fixtures_dir, tmp_path, damage)
    with pytest.raises(TextEncoderError, match=r"up_proj.weight \[32, 768\] \(expected \[64, 768\]\)") as error:
        T5GemmaTextEncoder.from_folder(folder, device="cpu", dtype=torch.float32)
    assert str(folder) in str(error.value)
