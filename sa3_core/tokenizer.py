"""The T5Gemma prompt tokenizer, built the same way (same token ids) on transformers 4.53 ... 5.x.

Two sources:

* an HF T5Gemma folder (the official ``t5gemma-b-b-ul2/``): :func:`tokenizer_from_folder`. The official
  code calls ``AutoTokenizer.from_pretrained`` on it; which class that builds depends on the transformers
  version (``tokenizer_class: "TokenizersBackend"`` only exists in 5.x, 4.x builds ``GemmaTokenizerFast``
  where 5.x builds ``GemmaTokenizer``, with other defaults). We build what transformers 5.x builds, out of
  parts both versions have: the folder's ``tokenizer.json`` loaded by the ``tokenizers`` library as it is,
  wrapped in ``PreTrainedTokenizerFast`` with the special tokens and padding side of
  ``tokenizer_config.json`` (see the function for each rule);
* the SentencePiece model inside the Comfy-Org single file (``spiece_model``), or a folder's
  ``tokenizer.model`` when it has no ``tokenizer.json``: :func:`tokenizer_from_sentencepiece`. We read the
  model bytes ourselves (neither ``sentencepiece`` nor ``protobuf`` is needed) and build the equivalent
  ``tokenizers`` BPE model with byte fallback directly, merges computed here.

The tokenizer returned is a ``transformers.PreTrainedTokenizerFast`` either way, called as the official
code calls it (``truncation=True, max_length=256, padding="max_length"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .validation import json_file_object

_PIECE_CONTROL, _PIECE_USER_DEFINED = 3, 4
_SPM_BPE = 2
_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
# transformers' class defaults where tokenizer_config.json says nothing: Gemma tokenizers pad on the left
# (GemmaTokenizerFast in 4.x and GemmaTokenizer in 5.x alike), every other class on the right.
_LEFT_PADDING_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast")
_UNLIMITED = 1 << 30  # model_max_length when the config gives none; callers always pass max_length


class TokenizerError(ValueError):
    """A tokenizer (folder files or SentencePiece bytes) we cannot build; the message names the source."""


# --------------------------------------------------------------------------------------------------
# HF folder
# --------------------------------------------------------------------------------------------------


def tokenizer_from_folder(folder: str | Path):
    """The tokenizer transformers 5.x's ``AutoTokenizer`` builds from a T5Gemma folder, on any version.

    - Vocabulary, normalizer, pre-tokenizer, BPE model, added tokens and post-processor: ``tokenizer.json``
      as it is (5.x's ``TokenizersBackend`` loads it so; its ``GemmaTokenizer`` rebuilds the normalizer,
      pre-tokenizer and decoder as Gemma's - the ones HF's converter writes into a Gemma
      ``tokenizer.json`` - and keeps the rest). Without ``tokenizer.json``, ``tokenizer.model``
      (SentencePiece) is converted as :func:`tokenizer_from_sentencepiece` does.
    - Special tokens: ``tokenizer_config.json``, overridden by ``special_tokens_map.json`` (older folders).
    - BOS/EOS: what ``tokenizer.json``'s post-processor adds. transformers 5.x (5.8, the official lock, and
      5.23 alike) drops the config's ``add_bos_token`` / ``add_eos_token`` when a ``tokenizer.json`` exists;
      4.x's ``GemmaTokenizerFast`` instead rebuilds the post-processor from them (``add_bos_token``
      defaulting to true). For a ``tokenizer.model``-only folder the config's flags apply (default false),
      as in 5.x.
    - ``padding_side`` / ``truncation_side``: the config's; else the padding direction ``tokenizer.json``
      enables; else left for Gemma tokenizer classes, right for the rest (both versions' defaults).
    """
    from tokenizers import Tokenizer

    folder = Path(folder)
    config = _read_json(folder / "tokenizer_config.json")
    for key, value in _read_json(folder / "special_tokens_map.json").items():
        config[key] = value
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        try:
            backend = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
            raise TokenizerError(f"{tokenizer_json}: not a valid tokenizers file ({exc})") from None
        file_padding = (backend.padding or {}).get("direction")
    else:
        model_file = folder / "tokenizer.model"
        if not model_file.is_file():
            raise TokenizerError(f"{folder}: no tokenizer.json or tokenizer.model")
        spm = _parse_supported(model_file.read_bytes(), str(model_file))
        backend = _sentencepiece_backend(spm)
        config = {**_sentencepiece_special_tokens(spm), **{k: v for k, v in config.items() if v is not None}}
        backend.post_processor = _special_tokens_template(
            backend,
            _token(config["bos_token"]),
            _token(config["eos_token"]),
            bool(config.get("add_bos_token")),
            bool(config.get("add_eos_token")),
        )
        file_padding = None
    default_side = "left" if config.get("tokenizer_class") in _LEFT_PADDING_CLASSES else "right"
    extra = [*_tokens(config.get("additional_special_tokens")), *_tokens(config.get("extra_special_tokens"))]
    return _wrap(
        backend,
        {key: _token(config.get(key)) for key in _SPECIAL_TOKEN_KEYS},
        additional=[_token(t) for t in extra],
        padding_side=config.get("padding_side") or file_padding or default_side,
        truncation_side=config.get("truncation_side") or "right",
        model_max_length=int(config.get("model_max_length") or _UNLIMITED),
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json_file_object(path, TokenizerError) if path.is_file() else {}


def _token(value: Any) -> str | None:
    """A special token as tokenizer configs write it: a string, or a serialized AddedToken ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _tokens(value: Any) -> list[Any]:
    """A list of extra special tokens: a list (4.x's additional_special_tokens, 5.x's extra_special_tokens) or a
    ``{name: token}`` mapping (older extra_special_tokens)."""
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, list) else []


def _special_tokens_template(backend, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool):
    """``[bos] $A [eos]`` (pairs: ``[bos] $A [eos] [bos] $B [eos]``): transformers 5.x's ``update_post_processor``."""
    from tokenizers import processors

    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None

    def template(sequence: str, type_id: int) -> list[str]:
        return [
            *([f"{bos}:{type_id}"] if add_bos else []),
            f"${sequence}:{type_id}",
            *([f"{eos}:{type_id}"] if add_eos else []),
        ]

    special = {}
    for token in [*([bos] if add_bos else []), *([eos] if add_eos else [])]:
        special[token] = backend.token_to_id(token)
        if special[token] is None:
            raise TokenizerError(f"special token {token!r} is not in the vocabulary")
    return processors.TemplateProcessing(
        single=" ".join(template("A", 0)),
        pair=" ".join(template("A", 0) + template("B", 1)),
        special_tokens=list(special.items()),
    )


def _wrap(
    backend,
    special: dict[str, str | None],
    *,
    additional: list[str | None] = (),
    padding_side: str,
    truncation_side: str = "right",
    model_max_length: int = _UNLIMITED,
):
    """A ``PreTrainedTokenizerFast`` around a ``tokenizers.Tokenizer``: the same class and arguments in 4.x and 5.x.

    ``add_bos_token`` / ``add_eos_token`` are deliberately not passed: 5.x rebuilds the post-processor from
    them, 4.x ignores them; the backend's post-processor already says what to add.
    """
    from transformers import PreTrainedTokenizerFast

    kwargs = {key: value for key, value in special.items() if value is not None}
    extras = [t for t in additional if t is not None and t not in kwargs.values()]
    if extras:
        kwargs["additional_special_tokens"] = list(dict.fromkeys(extras))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side=padding_side,
        truncation_side=truncation_side,
        model_max_length=model_max_length,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# SentencePiece model (no sentencepiece / protobuf packages needed)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentencePieceModel:
    """The parts of a serialized SentencePiece ``ModelProto`` that decide how text is tokenised."""

    pieces: tuple[str, ...]
    types: tuple[int, ...]  # 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    model_type: int = 1  # 1 unigram, 2 BPE, 3 word, 4 char
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    treat_whitespace_as_suffix: bool = False
    normalizer_name: str = "nmt_nfkc"
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(data: bytes):
    """Yield ``(field_number, value)`` of one protobuf message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated message")
        yield number, value


def parse_sentencepiece_model(data: bytes) -> SentencePieceModel:
    """Read a serialized SentencePiece model (``sentencepiece_model.proto``: pieces, trainer and normalizer spec)."""
    pieces: list[str] = []
    types: list[int] = []
    trainer: dict[int, Any] = {}
    normalizer: dict[int, Any] = {}
    for number, value in _proto_fields(bytes(data)):
        if number == 1:  # repeated SentencePiece {1: piece, 2: score, 3: type}
            piece, piece_type = "", 1
            for sub, sub_value in _proto_fields(value):
                if sub == 1:
                    piece = sub_value.decode("utf-8")
                elif sub == 3:
                    piece_type = sub_value
            pieces.append(piece)
            types.append(piece_type)
        elif number == 2:
            trainer.update(_proto_fields(value))
        elif number == 3:
            normalizer.update(_proto_fields(value))
    if not pieces:
        raise ValueError("no vocabulary pieces")

    def signed(v: int) -> int:  # int32 fields are sent as 64-bit two's complement
        return v - (1 << 64) if v >= 1 << 63 else v

    return SentencePieceModel(
        pieces=tuple(pieces),
        types=tuple(types),
        model_type=trainer.get(3, 1),
        byte_fallback=bool(trainer.get(35, 0)),
        unk_id=signed(trainer.get(40, 0)),
        bos_id=signed(trainer.get(41, 1)),
        eos_id=signed(trainer.get(42, 2)),
        pad_id=signed(trainer.get(43, -1)),
        treat_whitespace_as_suffix=bool(trainer.get(24, 0)),
        normalizer_name=bytes(normalizer.get(1, b"nmt_nfkc")).decode("utf-8", "replace"),
        precompiled_charsmap=bytes(normalizer.get(2, b"")),
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        escape_whitespaces=bool(normalizer.get(5, 1)),
    )


def tokenizer_from_sentencepiece(
    data: bytes,
    *,
    add_bos: bool = False,
    add_eos: bool = False,
    padding_side: str = "right",
    source: str = "<spiece_model>",
):
    """A tokenizer giving the ids of a Gemma-style SentencePiece BPE model (the Comfy-Org ``spiece_model``).

    Gemma's tokenizer is SentencePiece BPE with byte fallback, no dummy prefix and no normalisation beyond
    spaces -> "▁". The equivalent ``tokenizers`` pipeline: normalizer ``Replace(" ", "▁")``, a BPE model
    over the pieces (ids = piece indices, ``fuse_unk``, byte fallback to the ``<0xNN>`` pieces) with the
    merges of :func:`bpe_merges`, control pieces as special tokens and user-defined pieces as added tokens
    (both matched before normalisation), decoder ``▁`` -> space + byte fallback. Other SentencePiece
    flavours are refused rather than tokenised subtly wrong.

    ``add_bos`` / ``add_eos`` / ``padding_side``: ComfyUI and the official MLX port add no BOS/EOS and
    pad on the right; those are the defaults. (A folder's tokenizer follows its ``tokenizer_config.json``.)
    """
    spm = _parse_supported(data, source)
    special = _sentencepiece_special_tokens(spm)
    backend = _sentencepiece_backend(spm)
    backend.post_processor = _special_tokens_template(
        backend, special["bos_token"], special["eos_token"], add_bos, add_eos
    )
    return _wrap(backend, special, padding_side=padding_side)


def _parse_supported(data: bytes, source: str) -> SentencePieceModel:
    """Parse SentencePiece bytes and refuse what is not Gemma-style BPE (the only kind converted here)."""
    try:
        spm = parse_sentencepiece_model(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{source}: not a valid SentencePiece model ({exc})") from None
    problems = []
    if spm.model_type != _SPM_BPE:
        problems.append(f"model type {spm.model_type} (expected 2 = BPE)")
    if not spm.byte_fallback:
        problems.append("no byte fallback")
    if spm.add_dummy_prefix or spm.remove_extra_whitespaces or not spm.escape_whitespaces:
        problems.append("whitespace handling differs from Gemma's (dummy prefix / extra-whitespace removal)")
    if spm.precompiled_charsmap or spm.normalizer_name not in ("identity", ""):
        problems.append(f"text normalisation {spm.normalizer_name!r} (expected 'identity')")
    if spm.treat_whitespace_as_suffix:
        problems.append("whitespace treated as suffix")
    if not 0 <= spm.pad_id < len(spm.pieces):
        problems.append("no padding token")
    if problems:
        raise TokenizerError(f"{source}: unsupported SentencePiece model for T5Gemma: {'; '.join(problems)}")
    return spm


def bpe_merges(pieces: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """The BPE merges of a SentencePiece BPE vocabulary, highest priority first.

    Every split of a piece into two pieces of the vocabulary is a merge; merges rank by the id of the piece
    they make (SentencePiece numbers merged pieces in the order it learned them), then by the length of
    the left part. This is the order of HF's SentencePiece converters (``generate_merges`` in 5.x); only
    the order among merges making the same piece differs from 4.x's extractor, and that order cannot change
    a tokenisation (two such merges never compete for the same pair of adjacent tokens).
    """
    index = {piece: i for i, piece in enumerate(pieces)}
    return [
        (piece[:cut], piece[cut:])
        for piece in pieces
        for cut in range(1, len(piece))
        if piece[:cut] in index and piece[cut:] in index
    ]


def _sentencepiece_backend(spm: SentencePieceModel):
    """The ``tokenizers`` pipeline of :func:`tokenizer_from_sentencepiece`, without a post-processor."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    vocab = {piece: i for i, piece in enumerate(spm.pieces)}
    unk = _sentencepiece_special_tokens(spm)["unk_token"]
    backend = Tokenizer(
        BPE(vocab=vocab, merges=bpe_merges(spm.pieces), unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens(
        [AddedToken(p, normalized=False, special=True) for p, t in zip(spm.pieces, spm.types) if t == _PIECE_CONTROL]
    )
    backend.add_tokens(
        [
            AddedToken(p, normalized=False, special=False)
            for p, t in zip(spm.pieces, spm.types)
            if t == _PIECE_USER_DEFINED
        ]
    )
    return backend


def _sentencepiece_special_tokens(spm: SentencePieceModel) -> dict[str, str | None]:
    def piece(i: int) -> str | None:
        return spm.pieces[i] if 0 <= i < len(spm.pieces) else None

    return {
        "bos_token": piece(spm.bos_id),
        "eos_token": piece(spm.eos_id),
        "unk_token": piece(spm.unk_id),
        "pad_token": piece(spm.pad_id),
        "mask_token": "<mask>" if "<mask>" in spm.pieces else None,
    }
