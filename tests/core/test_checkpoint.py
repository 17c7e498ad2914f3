"""Checkpoint loading: the three accepted layouts, strict checks with clear errors, nothing half-loaded."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa3_core.checkpoint import (
    AUTOENCODER_PREFIX,
    CONDITIONER_PREFIX,
    DIT_PREFIX,
    CheckpointError,
    SafetensorsFile,
    TextEncoderOptions,
    build_modules,
    detect_autoencoder_variant,
    detect_variant,
    load_autoencoder,
    load_components,
    load_module_weights,
    load_text_encoder,
    module_shapes,
    preset_config,
)
from sa3_core.config import RECOMMENDATIONS, ModelConfig, Recommendation
from sa3_core.sampling import SAMPLERS
from sa3_core.t5gemma import T5GemmaTextEncoder
from sa3_core.tiny import tiny_sentencepiece_model

TE_FOLDER = "t5gemma-b-b-ul2"
# The tiny fixture encoders keep two transformers defaults that differ from T5Gemma-b; a single file
# cannot carry them, so the tests pass them the way a caller would.
TINY_TE_OVERRIDES = {"query_pre_attn_scalar": 256, "layer_types": ["sliding_attention"]}


@pytest.fixture(params=["small", "medium"])
def variant(request) -> str:
    return request.param


def _folder_copy(tmp_path: Path, source: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A folder of symlinks to a fixture folder's entries (the fixtures are never modified)."""
    folder = tmp_path / source.name
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name not in skip:
            (folder / entry.name).symlink_to(entry)
    return folder


# -- the official folder -----------------------------------------------------------------------------


def test_loads_official_folder(fixtures_dir: Path, variant: str):
    folder = fixtures_dir / f"tiny-{variant}"
    loaded = load_components(folder, device="cpu", dtype=torch.float32)
    tensors = load_file(str(folder / "model.safetensors"))

    assert loaded.layout == "folder" and loaded.config.variant == variant
    assert loaded.source == str(folder / "model.safetensors")
    for prefix, module in [
        (DIT_PREFIX, loaded.dit),
        (AUTOENCODER_PREFIX, loaded.autoencoder),
        (CONDITIONER_PREFIX, loaded.conditioners),
    ]:
        state = module.state_dict()
        assert {prefix + k for k in state} == {k for k in tensors if k.startswith(prefix)}
        for key, value in state.items():
            assert torch.equal(value, tensors[prefix + key]), key
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
    assert isinstance(loaded.text_encoder, T5GemmaTextEncoder)
    hidden, mask = loaded.text_encoder.encode(["piano drums"])
    assert hidden.shape == (1, 256, 768) and mask.sum() == 2


def test_dtype_conversion_keeps_file_values(fixtures_dir: Path):
    folder = fixtures_dir / "tiny-small"
    loaded = load_components(
        folder, device="cpu", dtype=torch.float16, text_encoder_dtype=torch.float32, load_text_encoder=True
    )
    tensors = load_file(str(folder / "model.safetensors"))
    key = "transformer.rotary_pos_emb.inv_freq"
    inv_freq = loaded.dit.state_dict()[key]
    assert inv_freq.dtype == torch.float16
    assert torch.equal(inv_freq, tensors[DIT_PREFIX + key].half())  # the file's values, cast with the model
    assert all(p.dtype == torch.float16 for p in loaded.dit.parameters())
    assert loaded.text_encoder.dtype == torch.float32


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (and the HF hub is told to stay offline)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_loading_never_touches_the_network(fixtures_dir: Path, no_network):
    loaded = load_components(fixtures_dir / "tiny-medium", device="cpu", dtype=torch.float32)
    assert loaded.text_encoder is not None


def test_text_encoder_can_be_skipped_or_given(fixtures_dir: Path, tmp_path: Path):
    folder = _folder_copy(tmp_path, fixtures_dir / "tiny-small", skip=(TE_FOLDER,))
    assert load_components(folder, device="cpu", dtype=torch.float32, load_text_encoder=False).text_encoder is None
    given = load_components(
        folder, device="cpu", dtype=torch.float32, text_encoder_path=fixtures_dir / "tiny-small" / TE_FOLDER
    )
    assert given.text_encoder is not None


# -- bad inputs: one clear error naming the file ---------------------------------------------------


def test_missing_text_encoder_folder_names_the_expected_path(fixtures_dir: Path, tmp_path: Path):
    folder = _folder_copy(tmp_path, fixtures_dir / "tiny-small", skip=(TE_FOLDER,))
    with pytest.raises(CheckpointError) as error:
        load_components(folder, device="cpu", dtype=torch.float32)
    assert str(folder / TE_FOLDER) in str(error.value)
    assert "model_config.json" in str(error.value)


def test_truncated_safetensors(fixtures_dir: Path, tmp_path: Path):
    folder = _folder_copy(tmp_path, fixtures_dir / "tiny-small", skip=("model.safetensors",))
    data = (fixtures_dir / "tiny-small" / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as error:
        load_components(folder, device="cpu", dtype=torch.float32)
    assert str(folder / "model.safetensors") in str(error.value)


def test_non_safetensors_file(tmp_path: Path):
    path = tmp_path / "stable_audio_3_small.safetensors"
    path.write_text("this is not a safetensors file, just some text that is long enough")
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as error:
        load_components(path, device="cpu", dtype=torch.float32)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "pytorch_model.bin", "disguised.safetensors"])
def test_pickle_files_are_refused_without_unpickling(tmp_path: Path, monkeypatch, name: str):
    path = tmp_path / name
    torch.save({"state_dict": {"a": torch.zeros(2)}}, path)  # written only; the loader must never open it

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the loader tried to unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    with pytest.raises(CheckpointError, match="pickle") as error:
        load_components(path, device="cpu", dtype=torch.float32)
    assert str(path) in str(error.value)


def test_safetensors_whose_header_length_starts_like_a_pickle(fixtures_dir: Path):
    """A 1408-byte header makes the file start with 0x80 0x05, a pickle's protocol-5 marker; it is safetensors."""
    path = fixtures_dir / "tiny-small" / TE_FOLDER / "model.safetensors"
    assert path.read_bytes()[:2] == b"\x80\x05"
    assert "encoder.embed_tokens.weight" in SafetensorsFile(path).shapes


def test_folder_with_only_a_pickle_checkpoint(fixtures_dir: Path, tmp_path: Path):
    folder = _folder_copy(tmp_path, fixtures_dir / "tiny-small", skip=("model.safetensors",))
    torch.save({"a": torch.zeros(1)}, folder / "model.ckpt")
    with pytest.raises(CheckpointError, match="model.ckpt") as error:
        load_components(folder, device="cpu", dtype=torch.float32)
    assert str(folder / "model.safetensors") in str(error.value)


def test_wrong_variant_config(fixtures_dir: Path, tmp_path: Path):
    """tiny-small's config with tiny-medium's weights: a shape error that names file and config."""
    folder = _folder_copy(tmp_path, fixtures_dir / "tiny-medium", skip=("model_config.json",))
    (folder / "model_config.json").symlink_to(fixtures_dir / "tiny-small" / "model_config.json")
    with pytest.raises(CheckpointError) as error:
        load_components(folder, device="cpu", dtype=torch.float32)
    message = str(error.value)
    assert message.startswith(str(folder / "model.safetensors"))
    assert str(folder / "model_config.json") in message
    assert "model.model.transformer.layers.0.self_attn.to_qkv.weight [640, 128] (expected [384, 128])" in message
    assert "unexpected" in message and "wrong shape" in message
    assert "look like a medium model" in message


def test_missing_config(fixtures_dir: Path, tmp_path: Path):
    folder = _folder_copy(tmp_path, fixtures_dir / "tiny-small", skip=("model_config.json",))
    with pytest.raises(CheckpointError, match="model_config.json: not found"):
        load_components(folder, device="cpu", dtype=torch.float32)


def test_missing_and_unexpected_tensors_are_listed(fixtures_dir: Path, tmp_path: Path):
    tensors = load_file(str(fixtures_dir / "tiny-small" / "model.safetensors"))
    del tensors[CONDITIONER_PREFIX + "prompt.padding_embedding"]
    tensors["model.model.extra.weight"] = torch.zeros(3)
    tensors["something.else"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as error:
        load_components(
            path, config=fixtures_dir / "tiny-small" / "model_config.json", device="cpu", dtype=torch.float32
        )
    message = str(error.value)
    assert message.startswith(str(path))
    assert "1 missing, 2 unexpected, 0 wrong shape" in message
    assert "conditioner.conditioners.prompt.padding_embedding" in message
    assert "model.model.extra.weight" in message and "something.else" in message


# -- load_module_weights on any module: checks first, nothing half-loaded ---------------------------


class _StandIn(torch.nn.Module):
    def __init__(self, device=None, dtype=None):
        super().__init__()
        self.first = torch.nn.Linear(4, 3, device=device, dtype=dtype)
        self.second = torch.nn.Linear(3, 2, device=device, dtype=dtype)
        self.register_buffer("inv_freq", torch.arange(2, device=device, dtype=dtype or torch.float32))


def _stand_in_tensors() -> dict[str, torch.Tensor]:
    return {
        "net.first.weight": torch.randn(3, 4),
        "net.first.bias": torch.randn(3),
        "net.second.weight": torch.randn(2, 3),
        "net.second.bias": torch.randn(2),
        "net.inv_freq": torch.tensor([0.5, 0.25]),
    }


def test_load_module_weights_into_a_real_module():
    module = _StandIn()
    tensors = _stand_in_tensors()
    load_module_weights(module, tensors, "stand-in.safetensors", prefix="net.")
    assert torch.equal(module.first.weight, tensors["net.first.weight"])
    assert torch.equal(module.inv_freq, tensors["net.inv_freq"])


def test_load_module_weights_assigns_into_meta_modules():
    module = _StandIn(device="meta", dtype=torch.float64)
    tensors = _stand_in_tensors()
    load_module_weights(module, tensors, "stand-in.safetensors", prefix="net.", device="cpu")
    assert module.second.bias.device.type == "cpu" and module.second.bias.dtype == torch.float64
    assert isinstance(module.second.bias, torch.nn.Parameter)
    assert torch.equal(module.second.bias, tensors["net.second.bias"].double())


@pytest.mark.parametrize("damage", ["shape", "missing", "unexpected"])
def test_failed_load_leaves_the_module_unchanged(damage: str):
    module = _StandIn()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    tensors = _stand_in_tensors()
    if damage == "shape":
        tensors["net.second.weight"] = torch.randn(2, 4)
        expected = r"net.second.weight \[2, 4\] \(expected \[2, 3\]\)"
    elif damage == "missing":
        del tensors["net.second.bias"]
        expected = r"missing \(1\): net.second.bias"
    else:
        tensors["net.third.weight"] = torch.randn(1)
        expected = r"unexpected \(1\): net.third.weight"
    with pytest.raises(CheckpointError, match=expected) as error:
        load_module_weights(module, tensors, "stand-in.safetensors", prefix="net.")
    assert str(error.value).startswith("stand-in.safetensors")
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key  # nothing was assigned


def test_load_module_weights_reads_safetensors_files(fixtures_dir: Path):
    config = ModelConfig.from_json(fixtures_dir / "tiny-small" / "model_config.json")
    module = build_modules(config, device="meta", dtype=torch.float32)[CONDITIONER_PREFIX]
    file = SafetensorsFile(fixtures_dir / "tiny-small" / "model.safetensors")
    load_module_weights(module, file, prefix=CONDITIONER_PREFIX, device="cpu")
    assert torch.equal(module.prompt.padding_embedding, file.read(CONDITIONER_PREFIX + "prompt.padding_embedding"))


# -- Comfy-Org single files ------------------------------------------------------------------------


def test_presets_give_the_real_checkpoint_shapes(fixtures_dir: Path):
    """The shipped presets build exactly the tensors of the real small (685) and medium (997) checkpoints."""
    for variant, count in [("small", 685), ("medium", 997)]:
        real = json.loads((fixtures_dir / "real_shapes" / f"{variant}_state_dict_shapes.json").read_text())
        real = {k: tuple(v) for k, v in real.items()}
        modules = build_modules(preset_config(variant), device="meta", dtype=torch.float32)
        ours = {k: s for prefix, m in modules.items() for k, s in module_shapes(m, prefix).items()}
        assert len(ours) == count and ours == real
        assert detect_variant(real) == variant
        assert detect_autoencoder_variant(real, prefix=AUTOENCODER_PREFIX) == (
            "SAME-L" if variant == "medium" else "SAME-S"
        )


def test_preset_base_flag():
    assert preset_config("small").diffusion_objective == "rf_denoiser"
    base = preset_config("medium", base=True)
    assert base.is_base and base.variant == "medium"
    # The official recommendations: distilled models sample with 8 ping-pong steps without guidance.
    assert preset_config("small").recommended == Recommendation(steps=8, cfg_scale=1.0, sampler="pingpong")
    assert base.recommended == Recommendation(steps=50, cfg_scale=7.0, sampler="euler")
    assert all(r.sampler in SAMPLERS for r in RECOMMENDATIONS.values())
    with pytest.raises(ValueError, match="unknown SA3 variant"):
        preset_config("large")


def test_single_file_with_explicit_config(fixtures_dir: Path, tmp_path: Path, variant: str):
    path = tmp_path / f"stable_audio_3_tiny_{variant}.safetensors"
    path.symlink_to(fixtures_dir / f"tiny-{variant}" / "model.safetensors")
    loaded = load_components(
        path, config=fixtures_dir / f"tiny-{variant}" / "model_config.json", device="cpu", dtype=torch.float32
    )
    assert loaded.layout == "single_file" and loaded.text_encoder is None
    tensors = load_file(str(path))
    assert torch.equal(
        loaded.dit.state_dict()["transformer.memory_tokens"], tensors[DIT_PREFIX + "transformer.memory_tokens"]
    )


def test_single_file_variant_detection_uses_presets(fixtures_dir: Path, tmp_path: Path, variant: str):
    """Without a config, a file is matched against the detected real preset: tiny weights do not fit."""
    path = tmp_path / "stable_audio_3_tiny.safetensors"
    path.symlink_to(fixtures_dir / f"tiny-{variant}" / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_components(path, device="cpu", dtype=torch.float32)
    message = str(error.value)
    assert message.startswith(str(path)) and f"{variant}.json" in message and "wrong shape" in message


def test_single_file_that_is_not_sa3(tmp_path: Path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not an SA3 checkpoint"):
        load_components(path, device="cpu", dtype=torch.float32)


# -- Comfy-Org text encoder file (t5gemma_b_b_ul2.safetensors) ----------------------------------------


def _comfy_text_encoder_file(fixtures_dir: Path, path: Path, *, spiece: bool = True, extra: dict | None = None) -> Path:
    """The tiny fixture encoder in the Comfy-Org layout: ``model.encoder.*`` + ``spiece_model``."""
    tensors = {
        "model." + k: v
        for k, v in load_file(str(fixtures_dir / "tiny-small" / TE_FOLDER / "model.safetensors")).items()
    }
    if spiece:
        tensors["spiece_model"] = torch.frombuffer(bytearray(tiny_sentencepiece_model()), dtype=torch.uint8)
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


def test_comfy_text_encoder_file_matches_the_folder(fixtures_dir: Path, tmp_path: Path, no_network):
    path = _comfy_text_encoder_file(fixtures_dir, tmp_path / "t5gemma_b_b_ul2.safetensors")
    options = TextEncoderOptions(config_overrides=TINY_TE_OVERRIDES)
    single = load_text_encoder(path, device="cpu", dtype=torch.float32, options=options)
    folder = load_text_encoder(fixtures_dir / "tiny-small" / TE_FOLDER, device="cpu", dtype=torch.float32)

    # Same weights under the mapped names, same outputs for the same token ids.
    assert single.model.state_dict().keys() == folder.model.state_dict().keys()
    for key, value in folder.model.state_dict().items():
        assert torch.equal(single.model.state_dict()[key], value), key
    ids = torch.tensor([[4, 5, 9, 0, 0], [3, 16, 0, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        a = single.model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = folder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)

    # The tokenizer comes from the file's SentencePiece bytes.
    ids, mask = single.tokenize(["abcd abcd", ""])
    assert ids.shape == (2, 256) and ids[0, :2].tolist() == [11, 12] and mask[0].sum() == 2 and not mask[1].any()
    hidden, _ = single.encode(["abcd abcd"])
    assert hidden.shape == (1, 256, 768)


def test_comfy_text_encoder_file_errors(fixtures_dir: Path, tmp_path: Path):
    options = TextEncoderOptions(config_overrides=TINY_TE_OVERRIDES)
    no_tokenizer = _comfy_text_encoder_file(fixtures_dir, tmp_path / "no_spiece.safetensors", spiece=False)
    with pytest.raises(CheckpointError, match="spiece_model") as error:
        load_text_encoder(no_tokenizer, device="cpu", dtype=torch.float32, options=options)
    assert str(no_tokenizer) in str(error.value)

    extra = _comfy_text_encoder_file(
        fixtures_dir,
        tmp_path / "extra.safetensors",
        extra={"model.encoder.bogus": torch.zeros(1), "model.decoder.norm.weight": torch.zeros(768)},
    )
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): model.encoder.bogus"):
        load_text_encoder(extra, device="cpu", dtype=torch.float32, options=options)

    pickled = tmp_path / "t5gemma.pt"
    torch.save({"a": 1}, pickled)
    with pytest.raises(CheckpointError, match="pickle"):
        load_text_encoder(pickled, device="cpu", dtype=torch.float32)


def test_single_file_with_comfy_text_encoder(fixtures_dir: Path, tmp_path: Path, no_network):
    te = _comfy_text_encoder_file(fixtures_dir, tmp_path / "t5gemma_b_b_ul2.safetensors")
    model = tmp_path / "stable_audio_3_tiny.safetensors"
    model.symlink_to(fixtures_dir / "tiny-small" / "model.safetensors")
    loaded = load_components(
        model,
        config=fixtures_dir / "tiny-small" / "model_config.json",
        text_encoder_path=te,
        text_encoder_options=TextEncoderOptions(config_overrides=TINY_TE_OVERRIDES),
        device="cpu",
        dtype=torch.float32,
    )
    hidden, mask = loaded.text_encoder.encode(["abcd"])
    out = loaded.conditioners(hidden, mask, [5.0])
    assert out.cross_attn_cond.shape == (1, 257, 768)


def test_bad_text_encoder_is_found_before_any_model_weight_is_read(fixtures_dir: Path, tmp_path: Path, monkeypatch):
    bad_te = tmp_path / "t5gemma.safetensors"
    bad_te.write_bytes(b"garbage")
    reads = []
    original = SafetensorsFile.read
    monkeypatch.setattr(SafetensorsFile, "read", lambda self, key: reads.append(key) or original(self, key))
    with pytest.raises(CheckpointError, match=str(bad_te)):
        load_components(fixtures_dir / "tiny-small", text_encoder_path=bad_te, device="cpu", dtype=torch.float32)
    assert reads == []


# -- SAME on its own --------------------------------------------------------------------------------


def _standalone_same_folder(fixtures_dir: Path, tmp_path: Path, variant: str) -> Path:
    """A SAME folder in the standalone layout: ``{"sample_rate", "model": {...}}`` and bare keys."""
    source = fixtures_dir / f"tiny-{variant}"
    raw = json.loads((source / "model_config.json").read_text())
    folder = tmp_path / f"SAME-{variant}"
    folder.mkdir()
    (folder / "model_config.json").write_text(
        json.dumps({"sample_rate": 44100, "model": raw["model"]["pretransform"]["config"]})
    )
    tensors = load_file(str(source / "model.safetensors"))
    save_file(
        {k[len(AUTOENCODER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(AUTOENCODER_PREFIX)},
        str(folder / "model.safetensors"),
    )
    return folder


def test_standalone_same_folder(fixtures_dir: Path, tmp_path: Path, variant: str):
    folder = _standalone_same_folder(fixtures_dir, tmp_path, variant)
    loaded = load_autoencoder(folder, device="cpu", dtype=torch.float32)
    reference = load_components(
        fixtures_dir / f"tiny-{variant}", device="cpu", dtype=torch.float32, load_text_encoder=False
    ).autoencoder
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.autoencoder.state_dict()[key], value), key
    assert loaded.config == dataclasses.replace(reference.config, chunked=True)
    with pytest.raises(CheckpointError, match="standalone SAME autoencoder"):
        load_components(folder, device="cpu", dtype=torch.float32)


def test_autoencoder_from_an_sa3_model(fixtures_dir: Path):
    loaded = load_autoencoder(fixtures_dir / "tiny-medium", device="cpu", dtype=torch.float32)
    tensors = load_file(str(fixtures_dir / "tiny-medium" / "model.safetensors"))
    for key, value in loaded.autoencoder.state_dict().items():
        assert torch.equal(value, tensors[AUTOENCODER_PREFIX + key]), key


def test_standalone_same_file_is_checked_against_the_detected_preset(fixtures_dir: Path, tmp_path: Path):
    folder = _standalone_same_folder(fixtures_dir, tmp_path, "small")
    path = folder / "model.safetensors"
    with pytest.raises(CheckpointError, match="wrong shape") as error:
        load_autoencoder(path, device="cpu", dtype=torch.float32)  # detected SAME-S; tiny widths differ
    assert str(error.value).startswith(str(path))
    config = ModelConfig.from_json(fixtures_dir / "tiny-small" / "model_config.json").autoencoder
    assert load_autoencoder(path, config=config, device="cpu", dtype=torch.float32).autoencoder is not None
