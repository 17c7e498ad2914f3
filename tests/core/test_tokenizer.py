"""The T5Gemma tokenizers: the same token ids on every supported transformers version (4.53 ... 5.x).

SentencePiece models are written here with a minimal protobuf writer, in the layout of
sentencepiece_model.proto; our reader needs neither sentencepiece nor protobuf. The ``sentencepiece``
library (a test dependency) is the reference for what such a model's ids are. For folders the reference
is transformers 5.x's ``AutoTokenizer`` (what the official code calls); the ids expected below were read
from it once and are asserted on every version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece
import transformers
from packaging.version import Version

from sa3_core.tiny import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, sentencepiece_model_bytes
from sa3_core.tokenizer import (
    TokenizerError,
    bpe_merges,
    parse_sentencepiece_model,
    tokenizer_from_folder,
    tokenizer_from_sentencepiece,
)

TRANSFORMERS_5 = Version(transformers.__version__) >= Version("5")


SPECIALS = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN)]
BYTES = [(f"<0x{b:02X}>", BYTE) for b in range(256)]
# Characters, then merges in rank order: p+i, a+n, an+o, pi+ano, d+r, u+m, um+s, dr+ums, ▁+drums.
WORDS = [
    (p, NORMAL)
    for p in [
        "▁",
        "a",
        "d",
        "i",
        "m",
        "n",
        "o",
        "p",
        "r",
        "s",
        "u",
        "pi",
        "an",
        "ano",
        "piano",
        "dr",
        "um",
        "ums",
        "drums",
        "▁drums",
    ]
]
GEMMA_STYLE = SPECIALS + BYTES + WORDS

# A real vocabulary: what sentencepiece 0.2.3 learned (BPE, 420 pieces, byte fallback, no dummy prefix,
# identity normalisation, split_by_whitespace=False, as Gemma's) from twenty music prompts; merged pieces
# in the order learned, then the characters. Pieces span spaces ("s▁and▁a▁s"), so merges compete.
LEARNED_PIECES = """
▁a in th ▁c ▁s ▁w ing nd ▁b ▁and ith ▁with ra ▁d at ic ▁t ar ho lo ro st ▁g ee le en on re ve ▁p ▁in
▁st s▁and an as he ri us roo ▁be ▁bas ▁cho ▁in▁a ad al ck ft gh hi ll or ui um vo ▁m ▁o ent ght ▁ho
▁ra atic ring ▁a▁d ▁bass ak av ba bi ed er es ff fo im ou ps rd ▁l ano arm avy eep ine ion ist low
oft ral rum tar use ver ▁at ▁br ▁cl ▁he ▁hi ▁me ▁on ▁pi ▁te ▁vo ic▁g ight king reak ving ▁a▁c ▁a▁g
▁a▁s ▁pad ▁roo entle lling matic roove uitar ▁beat ▁chop ▁dist ▁drum ▁rain ▁heavy ▁house ▁piano
ving▁te ▁groove ing▁in▁a ic▁guitar s▁and▁a▁s ▁ a i e t n o r s d l h c g u w b p m f v k , y z x - j q
""".split()
LEARNED = SPECIALS + [("<start_of_turn>", USER_DEFINED)] + BYTES + [(p, NORMAL) for p in LEARNED_PIECES]
LEARNED_BYTES = sentencepiece_model_bytes(LEARNED)

PROMPTS = [
    "warm analog synth pads with slow evolving textures",
    "deep house groove with a soulful vocal chop and a heavy bass",
    "  double  spaces, and a trailing space ",
    "Capitals, digits 120 BPM and UTF-8: café 音楽 🎹",
    "line one\nline two\ttabbed",
    "<start_of_turn>drums in a room",
    "",
]
# sentencepiece's ids for PROMPTS with LEARNED_BYTES (read once; asserted on every transformers version).
EXPECTED_IDS = [
    [
        406,
        340,
        261,
        396,
        392,
        280,
        404,
        265,
        414,
        396,
        263,
        371,
        399,
        272,
        265,
        346,
        391,
        394,
        314,
        401,
        386,
        416,
        395,
        405,
        288,
        399,
    ],
    [400, 342, 384, 387, 272, 370, 335, 401, 410, 405, 401, 362, 403, 305, 379, 270, 261, 383, 324],
    [
        391,
        274,
        335,
        407,
        285,
        391,
        265,
        408,
        392,
        403,
        331,
        413,
        270,
        261,
        277,
        273,
        393,
        401,
        267,
        265,
        408,
        392,
        403,
        394,
        391,
    ],
    [
        72,
        392,
        408,
        393,
        395,
        305,
        399,
        413,
        274,
        393,
        404,
        393,
        395,
        399,
        391,
        54,
        55,
        53,
        391,
        71,
        85,
        82,
        270,
        391,
        90,
        89,
        75,
        417,
        61,
        63,
        264,
        392,
        410,
        200,
        174,
        391,
        238,
        164,
        184,
        235,
        170,
        194,
        391,
        245,
        164,
        147,
        190,
    ],
    [401, 343, 359, 394, 15, 401, 343, 277, 406, 397, 14, 395, 392, 407, 407, 329],
    [4, 400, 349, 399, 303, 372, 409],
    [],
]


def _ids(prompts: list[str]) -> list[list[int]]:
    return tokenizer_from_sentencepiece(LEARNED_BYTES)(prompts)["input_ids"]


# -- SentencePiece model bytes -> tokenizer ----------------------------------------------------------


def test_sentencepiece_model_is_parsed():
    model = parse_sentencepiece_model(sentencepiece_model_bytes(GEMMA_STYLE))
    assert len(model.pieces) == 280 and model.pieces[:4] == ("<pad>", "<eos>", "<bos>", "<unk>")
    assert model.types[4] == BYTE and model.pieces[-1] == "▁drums"
    assert (model.model_type, model.byte_fallback, model.add_dummy_prefix) == (2, True, False)
    assert (model.pad_id, model.eos_id, model.bos_id, model.unk_id) == (0, 1, 2, 3)


def test_tokenizer_from_sentencepiece_bytes():
    tokenizer = tokenizer_from_sentencepiece(sentencepiece_model_bytes(GEMMA_STYLE))
    piece_id = {p: i for i, (p, _) in enumerate(GEMMA_STYLE)}
    # Known words merge fully; the space becomes "▁" and sticks to the following word (no dummy prefix).
    assert tokenizer("piano drums")["input_ids"] == [piece_id["piano"], piece_id["▁drums"]]
    # Unknown characters fall back to UTF-8 bytes.
    assert tokenizer("zap")["input_ids"] == [4 + ord("z"), piece_id["a"], piece_id["p"]]
    assert tokenizer("é")["input_ids"] == [4 + 0xC3, 4 + 0xA9]
    batch = tokenizer(["piano", ""], truncation=True, max_length=4, padding="max_length")
    assert batch["input_ids"] == [[piece_id["piano"], 0, 0, 0], [0, 0, 0, 0]]  # right padding, pad id 0
    assert batch["attention_mask"] == [[1, 0, 0, 0], [0, 0, 0, 0]]
    with_specials = tokenizer_from_sentencepiece(sentencepiece_model_bytes(GEMMA_STYLE), add_bos=True, add_eos=True)
    assert with_specials("piano")["input_ids"] == [2, piece_id["piano"], 1]
    assert tokenizer.decode(tokenizer("piano drums é")["input_ids"]) == "piano drums é"


@pytest.mark.parametrize(
    "data, message",
    [
        (sentencepiece_model_bytes(GEMMA_STYLE, model_type=1), "BPE"),
        (sentencepiece_model_bytes(GEMMA_STYLE, add_dummy_prefix=True), "whitespace"),
        (sentencepiece_model_bytes(GEMMA_STYLE, normalizer="nmt_nfkc"), "normalisation"),
        (b"\x0a\xff\xff\xff", "not a valid SentencePiece model"),
        (b"", "not a valid SentencePiece model"),
    ],
)
def test_unsupported_sentencepiece_models_are_refused(data: bytes, message: str):
    with pytest.raises(TokenizerError, match=message):
        tokenizer_from_sentencepiece(data, source="t5gemma.safetensors:spiece_model")


def test_merges_rank_by_the_piece_they_make():
    assert bpe_merges(["a", "b", "c", "ab", "bc", "abc"]) == [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]


# -- the same ids on every transformers version ------------------------------------------------------


def test_sentencepiece_ids_are_the_stored_ones():
    """Identical on transformers 4.53, 4.57 and 5.x (CI runs this file on 4.x and 5.x)."""
    assert _ids(PROMPTS) == EXPECTED_IDS


def test_sentencepiece_ids_are_sentencepiece_s():
    """Our BPE (merges computed here) against the sentencepiece library on many strings of the vocabulary's
    words, odd spacing, capitals, digits, punctuation and characters outside it (byte fallback)."""
    reference = sentencepiece.SentencePieceProcessor(model_proto=LEARNED_BYTES)
    assert [reference.encode(p) for p in PROMPTS] == EXPECTED_IDS
    words = (
        "warm analog synth pads slow evolving textures house groove soulful vocal chop heavy bass rain "
        "thunder piano guitar drums in a and with the at a room, Dark 808 kick- ümlaut 雨 ♪".split()
    )
    generator = random.Random(0)
    texts = [
        generator.choice(["", " ", "  "]).join(generator.choices(words, k=generator.randint(1, 12)))
        + generator.choice(["", " ", "\n"])
        for _ in range(300)
    ]
    assert _ids(texts) == [reference.encode(t) for t in texts]


def test_control_pieces_in_text_are_their_tokens():
    """A deliberate difference from sentencepiece, which spells control pieces out: ``<eos>`` typed in a prompt
    is the EOS token, as in transformers' tokenizers for the official folder (and our previous builder)."""
    assert _ids(["rain<eos>"]) == [[273, 262, 1]]  # ra, in, <eos>


# -- folders: what transformers 5.x's AutoTokenizer builds, on any version ------------------------------


def _write_folder(folder: Path, config: dict, *, with_json: bool = True) -> Path:
    """A T5Gemma tokenizer folder: the LEARNED vocabulary as HF's Gemma converter writes ``tokenizer.json``
    (BPE with byte fallback, ``" " -> "▁"``, BOS added by the post-processor), or only ``tokenizer.model``."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if not with_json:
        (folder / "tokenizer.model").write_bytes(LEARNED_BYTES)
        return folder
    pieces = [p for p, _ in LEARNED]
    backend = Tokenizer(
        BPE(
            vocab={p: i for i, p in enumerate(pieces)},
            merges=bpe_merges(pieces),
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens([AddedToken(p, normalized=False, special=True) for p, t in LEARNED if t == CONTROL])
    backend.add_tokens([AddedToken("<start_of_turn>", normalized=False)])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    backend.save(str(folder / "tokenizer.json"))
    return folder


GEMMA_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
# name: (tokenizer_config.json, (BOS added, EOS added, padding side) as transformers 5.x does, whether 4.x's
# AutoTokenizer gives the same). Every tokenizer.json here adds a BOS; 5.x ignores the config's add_*_token then.
FOLDERS = {
    "gemma, silent": ({"tokenizer_class": "GemmaTokenizer", **GEMMA_TOKENS}, (True, False, "left"), True),
    "gemma, bos": (
        {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False, **GEMMA_TOKENS},
        (True, False, "left"),
        True,
    ),
    "gemma, no bos, right padding": (
        {
            "tokenizer_class": "GemmaTokenizer",
            "add_bos_token": False,
            "add_eos_token": False,
            "padding_side": "right",
            **GEMMA_TOKENS,
        },
        (True, False, "right"),
        False,
    ),
    "gemma, eos, AddedToken dicts": (
        {
            "tokenizer_class": "GemmaTokenizer",
            "add_eos_token": True,
            **{k: {"content": v, "__type": "AddedToken"} for k, v in GEMMA_TOKENS.items()},
        },
        (True, False, "left"),
        False,
    ),
    "backend (a transformers 5 save)": (
        {"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", **GEMMA_TOKENS},
        (True, False, "right"),
        False,
    ),
}
MAX_LENGTH = 24


def _expected_rows(bos: bool, eos: bool, side: str) -> tuple[list[list[int]], list[list[int]]]:
    """EXPECTED_IDS with the specials, truncated to MAX_LENGTH (content first) and padded with id 0."""
    rows, masks = [], []
    for ids in EXPECTED_IDS:
        room = MAX_LENGTH - bos - eos
        row = [2] * bos + ids[:room] + [1] * eos
        pad = [0] * (MAX_LENGTH - len(row))
        rows.append(pad + row if side == "left" else row + pad)
        ones = [1] * len(row)
        masks.append([0] * len(pad) + ones if side == "left" else ones + [0] * len(pad))
    return rows, masks


def _encode(tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    batch = tokenizer(PROMPTS, truncation=True, max_length=MAX_LENGTH, padding="max_length")
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("name", FOLDERS)
def test_folder_tokenizer_follows_its_config(tmp_path: Path, name: str):
    config, expected, _ = FOLDERS[name]
    folder = _write_folder(tmp_path / "t5gemma", config)
    assert _encode(tokenizer_from_folder(folder)) == _expected_rows(*expected)


@pytest.mark.parametrize("name", FOLDERS)
def test_folder_tokenizer_is_autotokenizer_s(tmp_path: Path, name: str):
    """The reference, transformers' AutoTokenizer on the same folder: equal on 5.x; on 4.x equal where its
    defaults agree with 5.x, and different (4.x follows add_bos/eos_token, has no TokenizersBackend) elsewhere."""
    from transformers import AutoTokenizer

    config, _, agrees_on_4 = FOLDERS[name]
    folder = _write_folder(tmp_path / "t5gemma", config)
    ours = _encode(tokenizer_from_folder(folder))
    if config["tokenizer_class"] == "TokenizersBackend" and not TRANSFORMERS_5:
        with pytest.raises(ValueError, match="TokenizersBackend"):
            AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return
    reference = _encode(AutoTokenizer.from_pretrained(folder, local_files_only=True))
    if TRANSFORMERS_5 or agrees_on_4:
        assert ours == reference
    else:
        assert ours != reference


def test_folder_with_only_a_sentencepiece_model(tmp_path: Path):
    folder = _write_folder(
        tmp_path / "t5gemma", {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True}, with_json=False
    )
    assert _encode(tokenizer_from_folder(folder)) == _expected_rows(True, False, "left")


def test_folder_tokenizer_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        tokenizer_from_folder(empty)
    broken = _write_folder(tmp_path / "broken", {})
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid tokenizers file"):
        tokenizer_from_folder(broken)
    unknown_bos = _write_folder(tmp_path / "unknown", {"add_bos_token": True, "bos_token": "<s>"}, with_json=False)
    with pytest.raises(TokenizerError, match="'<s>' is not in the vocabulary"):
        tokenizer_from_folder(unknown_bos)
