"""Prompt and duration conditioning: parity with the official conditioners, padding, caching, the encoder.

(The tokenizers are tests/core/test_tokenizer.py.)
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sa3_core.checkpoint import CheckpointError, load_text_encoder
from sa3_core.conditioners import Conditioners, PromptConditioner, SecondsConditioner
from sa3_core.config import ModelConfig
from sa3_core.sampling import negative_token_mask
from sa3_core.t5gemma import T5GemmaTextEncoder, TextEncoderError, comfy_key_to_transformers, transformers_key_to_comfy
from tests.helpers import relative_l2

PREFIX = "conditioner.conditioners."
TOLERANCE = 1e-4  # relative L2, the team-wide parity bound


@pytest.fixture(params=["small", "medium"])
def variant(request) -> str:
    return request.param


def _conditioners(folder: Path) -> Conditioners:
    cfg = ModelConfig.from_json(folder / "model_config.json")
    conditioners = Conditioners(cfg.conditioning, device="cpu", dtype=torch.float32)
    tensors = load_file(str(folder / "model.safetensors"))
    conditioners.load_state_dict({k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}, strict=True)
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

    assert out.cross_attn_cond.shape == (3, 257, 768)
    assert relative_l2(out.cross_attn_cond[:, :256], expected["prompt.embeddings"]) <= TOLERANCE
    assert torch.equal(out.prompt_mask, expected["prompt.mask"].bool())
    assert relative_l2(out.cross_attn_cond[:, 256:], expected["seconds_total.embeddings"]) <= TOLERANCE
    assert relative_l2(out.cross_attn_cond, expected["cross_attn_cond"]) <= TOLERANCE
    assert torch.equal(negative_token_mask(out.prompt_mask), expected["cross_attn_mask"].bool())
    assert relative_l2(out.global_cond, expected["global_cond"]) <= TOLERANCE


def test_conditioner_keys_are_checkpoint_keys(fixtures_dir: Path, variant: str):
    folder = fixtures_dir / f"tiny-{variant}"
    cfg = ModelConfig.from_json(folder / "model_config.json")
    ours = {k: tuple(v.shape) for k, v in Conditioners(cfg.conditioning, device="meta").state_dict().items()}
    file = load_file(str(folder / "model.safetensors"))
    theirs = {k[len(PREFIX) :]: tuple(v.shape) for k, v in file.items() if k.startswith(PREFIX)}
    assert (
        ours
        == theirs
        == {
            "prompt.padding_embedding": (768,),
            "seconds_total.embedder.embedding.1.weight": (768, 256),
            "seconds_total.embedder.embedding.1.bias": (768,),
        }
    )


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
    encoder = T5GemmaTextEncoder.from_folder(
        fixtures_dir / "tiny-small" / "t5gemma-b-b-ul2", device="cpu", dtype=torch.float32, cache_size=3
    )
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
    encoder = T5GemmaTextEncoder.from_folder(
        fixtures_dir / "tiny-small" / "t5gemma-b-b-ul2", device="cpu", dtype=torch.float32
    )
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
    encoder = T5GemmaTextEncoder.from_folder(
        fixtures_dir / "tiny-medium" / "t5gemma-b-b-ul2", device="cpu", dtype=torch.float32
    )
    hidden, mask = encoder.encode(["rain thunder"])
    assert hidden.shape == (1, 256, 768) and mask.sum() == 2


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(TextEncoderError, match="text encoder folder not found"):
        T5GemmaTextEncoder.from_folder(tmp_path / "nowhere", device="cpu", dtype=torch.float32)


def test_comfy_key_mapping():
    assert (
        comfy_key_to_transformers("model.encoder.layers.3.mlp.up_proj.weight") == "encoder.layers.3.mlp.up_proj.weight"
    )
    assert comfy_key_to_transformers("spiece_model") is None
    assert comfy_key_to_transformers("model.decoder.norm.weight") is None
    assert transformers_key_to_comfy("encoder.norm.weight") == "model.encoder.norm.weight"


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
    # The strict loader checks names and shapes itself, before transformers reads a weight ...
    with pytest.raises(CheckpointError, match=r"up_proj.weight \[32, 768\] \(expected \[64, 768\]\)") as error:
        load_text_encoder(folder, device="cpu", dtype=torch.float32)
    assert str(error.value).startswith(str(folder))
    # ... and transformers' own report still refuses it (transformers 4.x names the tensor without shapes).
    with pytest.raises(
        TextEncoderError, match=r"1 with a different shape: encoder.layers.0.mlp.up_proj.weight"
    ) as error:
        T5GemmaTextEncoder.from_folder(folder, device="cpu", dtype=torch.float32)
    assert str(folder) in str(error.value)


# -- the same encoder on every transformers version -------------------------------------------------


def test_attention_logits_are_soft_capped(fixtures_dir: Path, tmp_path: Path):
    """T5Gemma caps attention logits at 50 (tanh). transformers 4.x would pick SDPA for it, which skips the
    cap; we ask for eager attention on every version. With q/k large enough for the cap to bite, removing
    the cap must change the output."""
    generator = torch.Generator().manual_seed(0)

    def sharpen(tensors):
        for key in [k for k in tensors if k.endswith(("q_proj.weight", "k_proj.weight"))]:
            tensors[key] = torch.randn(tensors[key].shape, generator=generator) * 0.5

    encoder = T5GemmaTextEncoder.from_folder(
        _text_encoder_copy(fixtures_dir, tmp_path, sharpen), device="cpu", dtype=torch.float32, cache_size=0
    )
    capped, _ = encoder.encode(["piano drums bass synth"])
    for layer in encoder.model.encoder.layers:
        layer.self_attn.attn_logit_softcapping = None
    uncapped, _ = encoder.encode(["piano drums bass synth"])
    assert (capped - uncapped).abs().max() > 0.1


def test_folder_with_the_whole_encoder_decoder_model(fixtures_dir: Path, tmp_path: Path):
    """The official t5gemma-b-b-ul2/ holds T5GemmaForConditionalGeneration: encoder tensors as model.encoder.*
    next to the decoder's. The encoder loads from it as from an encoder-only save; the decoder is ignored."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration

    source = fixtures_dir / "tiny-small" / "t5gemma-b-b-ul2"
    encoder_config = json.loads((source / "config.json").read_text())["encoder"]
    module = {
        key: encoder_config[key]
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "query_pre_attn_scalar",
            "layer_types",
        )
    }
    whole = T5GemmaForConditionalGeneration(
        T5GemmaConfig(encoder=module, decoder={**module, "is_decoder": True}, vocab_size=module["vocab_size"])
    )
    encoder_tensors = load_file(str(source / "model.safetensors"))
    whole.model.encoder.load_state_dict({k[len("encoder.") :]: v for k, v in encoder_tensors.items()}, strict=True)
    folder = tmp_path / "t5gemma-b-b-ul2"
    whole.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).symlink_to(source / name)
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert {k.split(".")[1] for k in handle.keys()} == {"encoder", "decoder"}

    loaded = load_text_encoder(folder, device="cpu", dtype=torch.float32)
    reference = load_text_encoder(source, device="cpu", dtype=torch.float32)
    assert torch.equal(loaded.encode(["rain thunder"])[0], reference.encode(["rain thunder"])[0])
