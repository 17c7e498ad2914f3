"""Bad input on a real server (issue 13): never a blocked server, a garbage "success", a swamped machine or a
leaked path. Each case checks the error (where it shows, what it says) and that the server goes on serving.

Files these tests add to the server's folders (broken models and LoRAs, a second text encoder) are removed
again, so the other e2e modules see the folders as they were.
"""

from __future__ import annotations

import json
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfy_host import ComfyClient, ComfyServer, PromptRejected, changed_folder, decode_audio
from sa3_assets import SA3_EXAMPLE_INPUT, SA3_LORAS, SA3_MODEL_NAME, SA3_TEXT_ENCODER_FILE
from sa3_core.pipeline import StableAudioModel

ATOL = 2 / 32768  # 16-bit FLAC quantisation
NAN = float("nan")
_seeds = iter(range(30_000, 40_000))


def graph(
    prompt: str = "piano",
    *,
    seed: int | None = None,
    steps: int = 2,
    cfg: float = 0.0,
    apg: float = 1.0,
    shift: float = 0.0,
    model: str = SA3_MODEL_NAME,
    text_encoder: str = "auto",
    lora: tuple[str, float] | None = None,
    batch_from_conditioning: bool = False,
) -> dict[str, Any]:
    """Loader -> [LoRA] -> Text Encode + Empty Latent -> Sampler -> VAE Decode -> Save Audio (2 s)."""
    nodes: dict[str, Any] = {
        "1": {
            "class_type": "SA3_ModelLoader",
            "inputs": {"model": model, "text_encoder": text_encoder, "dtype": "auto", "attention": "auto"},
        }
    }
    wire = ["1", 0]
    if lora is not None:
        nodes["l0"] = {
            "class_type": "SA3_LoRAApply",
            "inputs": {"model": wire, "lora_name": lora[0], "strength": lora[1], "target": "dit and conditioner"},
        }
        wire = ["l0", 0]
    latent_inputs: dict[str, Any] = {"model": wire, "duration": 2.0, "batch_size": 1}
    if batch_from_conditioning:
        latent_inputs["conditioning"] = ["2", 0]
    nodes |= {
        "2": {
            "class_type": "SA3_TextEncode",
            "inputs": {"model": wire, "prompt": prompt, "negative_prompt": "", "duration": 2.0},
        },
        "3": {"class_type": "SA3_EmptyLatent", "inputs": latent_inputs},
        "4": {
            "class_type": "SA3_RFSampler",
            "inputs": {
                "model": wire,
                "conditioning": ["2", 0],
                "latent": ["3", 0],
                "seed": next(_seeds) if seed is None else seed,
                "steps": steps,
                "cfg": cfg,
                "apg_scale": apg,
                "sampler": "auto",
                "shift": shift,
            },
        },
        "5": {
            "class_type": "SA3_VAEDecode",
            "inputs": {"model": wire, "latent": ["4", 0], "chunked": "auto", "peak": "clamp"},
        },
        "6": {"class_type": "SaveAudio", "inputs": {"audio": ["5", 0], "filename_prefix": "audio/sa3_bad_input"}},
    }
    return nodes


def with_audio(nodes: dict[str, Any], clip: str, node: str, **inputs: Any) -> dict[str, Any]:
    """Route the latent through Init Audio ("init") or Inpaint ("inpaint") fed by LoadAudio(clip)."""
    nodes["7"] = {"class_type": "LoadAudio", "inputs": {"audio": clip}}
    if node == "init":
        nodes["8"] = {
            "class_type": "SA3_InitAudioEncode",
            "inputs": {"model": ["1", 0], "latent": ["3", 0], "audio": ["7", 0], "noise_level": 0.8},
        }
    else:
        nodes["8"] = {
            "class_type": "SA3_InpaintMask",
            "inputs": {"model": ["1", 0], "latent": ["3", 0], "audio": ["7", 0], "mode": "regions", **inputs},
        }
    nodes["4"]["inputs"]["latent"] = ["8", 0]
    return nodes


def assert_serves(comfy: ComfyClient, reference: StableAudioModel | None = None) -> None:
    """A good prompt (fresh seed, so it really runs) succeeds; with ``reference``, its audio is the Python API's:
    nothing a failed prompt touched (weights, LoRA patches) was left behind."""
    seed = next(_seeds)
    result = comfy.run(graph("bass", seed=seed), timeout_s=300)
    assert result.ok, result.messages
    (file_ref,) = result.files("6")
    if reference is not None:
        saved, _ = decode_audio(comfy.view(file_ref))
        expected = reference.generate(prompt="bass", duration=2.0, steps=2, seed=seed)[0].numpy()
        np.testing.assert_allclose(saved, expected, rtol=0, atol=ATOL)


def assert_no_absolute_paths(text: str, server: ComfyServer) -> None:
    assert str(server.base_dir) not in text and str(server.models_dir) not in text, text


def queue_with_nan(comfy: ComfyClient, nodes: dict[str, Any]) -> str:
    """POST /prompt with JSON's NaN token in the body (requests' ``json=`` refuses to write it)."""
    body = json.dumps({"prompt": nodes, "client_id": comfy.client_id})  # allow_nan: writes NaN
    response = requests.post(f"{comfy.url}/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    response.raise_for_status()
    return response.json()["prompt_id"]


def run_error(comfy: ComfyClient, nodes: dict[str, Any]) -> dict[str, Any]:
    """Run a prompt that must fail at run time and write nothing; its execution_error."""
    result = comfy.wait_for(queue_with_nan(comfy, nodes), timeout_s=300)
    assert not result.ok and result.error is not None, result.messages
    assert result.files("6") == []
    return result.error


@contextmanager
def placed(server: ComfyServer, relative: str, source: Path) -> Iterator[str]:
    """``source`` linked into the server's folders for the duration of the block; yields its listed name."""
    server.link(relative, source)
    try:
        yield relative.split("/", 2)[2]
    finally:
        server.remove(relative)


@contextmanager
def set_aside(server: ComfyServer, relative: str) -> Iterator[None]:
    """The server's file ``relative`` moved out of its folder for the duration of the block."""
    target = server.base_dir / relative
    aside = target.with_name(f".{target.name}.aside")
    target.rename(aside)
    changed_folder(target.parent)
    try:
        yield
    finally:
        aside.rename(target)
        changed_folder(target.parent)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> str:
    """(channels, n) float in [-1, 1] -> 16-bit WAV; returns the file name."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.T.tobytes())
    return path.name


@pytest.fixture
def clip_file(sa3_server: ComfyServer) -> Iterator:
    """``clip_file(name, samples, rate)`` writes a WAV into the server's input/ and returns its name; the files
    are removed after the test."""
    written: list[Path] = []

    def write(name: str, samples: np.ndarray, rate: int) -> str:
        written.append(sa3_server.input_dir / name)
        return write_wav(written[-1], samples, rate)

    yield write
    for path in written:
        path.unlink(missing_ok=True)


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.repeat((0.3 * np.sin(2 * np.pi * 220 * t))[None], channels, axis=0)


# --------------------------------------------------------------------------------------------------
# 1. Long text is refused at once, and the server keeps answering
# --------------------------------------------------------------------------------------------------


def test_a_huge_region_text_is_refused_at_once_and_the_server_keeps_answering(
    sa3_server: ComfyServer, comfy: ComfyClient
) -> None:
    """32 kB of digits took the old parser ~30 s inside the request handler, and /system_stats waited."""
    rejected: list[PromptRejected] = []

    def post_bad_prompt() -> None:
        try:
            comfy.queue_prompt(with_audio(graph(), SA3_EXAMPLE_INPUT, "inpaint", regions="1" * 32_000))
        except PromptRejected as exc:
            rejected.append(exc)

    poster = threading.Thread(target=post_bad_prompt)
    poster.start()
    # Another client, meanwhile: the handler must not be held up (the old parse blocked it for ~30 s).
    stats = requests.get(f"{comfy.url}/system_stats", timeout=10)
    poster.join(timeout=60)
    assert stats.status_code == 200 and "system" in stats.json()
    assert not poster.is_alive()
    (exc,) = rejected
    details = " ".join(e["details"] for e in exc.node_errors["8"]["errors"])
    assert "regions: 32000 characters, more than the 4096 allowed" in details
    assert_serves(comfy)


def test_too_many_prompts_in_one_widget_are_refused_at_queue_time(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    """130 prompts separated by --- with the conditioning wired to Empty Latent bypassed its 64 maximum."""
    prompts = "\n---\n".join(["piano"] * 130)
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(graph(prompts, batch_from_conditioning=True))
    details = " ".join(e["details"] for e in rejected.value.node_errors["2"]["errors"])
    assert "prompt (items separated by '---'): 130 items, more than the 64 one generation takes" in details
    assert_serves(comfy)


def test_a_lone_surrogate_in_a_prompt_is_a_clear_error(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(graph("piano \ud800 drums"))  # JSON "\ud800": valid JSON, not valid text
    details = " ".join(e["details"] for e in rejected.value.node_errors["2"]["errors"])
    assert "prompt[0] is not valid text: character 6 is a lone UTF-16 surrogate (U+D800)" in details
    assert_serves(comfy)


def test_a_prompt_past_the_encoders_length_runs_and_the_log_says_it_was_cut(
    sa3_server: ComfyServer, comfy: ComfyClient
) -> None:
    long_prompt = " ".join(["piano"] * 17_000)  # 100 kB
    result = comfy.run(graph(long_prompt), timeout_s=300)
    assert result.ok, result.messages
    assert "a prompt of 17000 tokens (101999 characters) is longer than the 256 tokens" in sa3_server.log_text()


# --------------------------------------------------------------------------------------------------
# 3, 4. Non-finite numbers and weights never write a file
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["cfg", "apg", "shift"])
def test_nan_sampler_settings_fail_without_writing_a_file(
    setting: str, sa3_server: ComfyServer, comfy: ComfyClient
) -> None:
    """JSON's NaN passes ComfyUI's min/max checks; the old sampler kept it and wrote full-scale noise."""
    settings = {"cfg": NAN} if setting == "cfg" else {"cfg": 3.0, setting: NAN}
    error = run_error(comfy, graph(**settings))
    assert error["node_id"] == "4"
    name = {"cfg": "cfg", "apg": "apg_scale", "shift": "shift"}[setting]
    assert f"{name} must be a finite number, got nan" in error["exception_message"]
    assert_serves(comfy)


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_file(
    sa3_server: ComfyServer, comfy: ComfyClient, sa3_tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for entry in sa3_tiny_model.iterdir():
        if entry.name != "model.safetensors":
            (broken / entry.name).symlink_to(entry)
    tensors = load_file(str(sa3_tiny_model / "model.safetensors"))
    key = "model.model.transformer.layers.1.ff.ff.0.proj.weight"
    key = key if key in tensors else next(k for k in tensors if k.startswith("model.model.transformer.layers.1."))
    tensors[key].view(-1)[0] = NAN
    save_file(tensors, str(broken / "model.safetensors"))
    with placed(sa3_server, "models/stable_audio_3/broken-model", broken) as name:
        error = run_error(comfy, graph(model=name))
    assert error["node_id"] == "1"
    message = error["exception_message"]
    assert f"models/stable_audio_3/broken-model/model.safetensors: tensor {key} holds NaN" in message
    assert_no_absolute_paths(message, sa3_server)
    assert_serves(comfy)


def _lora(
    fixtures_dir: Path, tmp_path: Path, name: str, *, nan_factor: bool = False, alpha: float | None = None
) -> Path:
    source = fixtures_dir / "loras" / SA3_LORAS[0]
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    if nan_factor:
        tensors[next(k for k in tensors if k.endswith("lora_B"))][0, 0] = NAN
    if alpha is not None:
        metadata = {"lora_config": json.dumps(json.loads(metadata["lora_config"]) | {"alpha": alpha})}
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_a_lora_with_nan_factors_is_refused_when_applied(
    sa3_server: ComfyServer, comfy: ComfyClient, fixtures_dir: Path, tmp_path: Path
) -> None:
    lora = _lora(fixtures_dir, tmp_path, "nan_lora.safetensors", nan_factor=True)
    with placed(sa3_server, "models/loras/nan_lora.safetensors", lora) as name:
        error = run_error(comfy, graph(lora=(name, 1.0)))
    assert error["node_id"] == "l0"
    assert "models/loras/nan_lora.safetensors: " in error["exception_message"]
    assert "lora_B' holds NaN or infinite values" in error["exception_message"]
    assert_no_absolute_paths(error["exception_message"], sa3_server)
    assert_serves(comfy)


def test_a_lora_whose_merged_weights_blow_up_is_refused_and_the_plain_model_is_intact(
    sa3_server: ComfyServer, comfy: ComfyClient, fixtures_dir: Path, tmp_path: Path, reference_model: StableAudioModel
) -> None:
    """alpha 1e30 makes the merged weights ~1e27: refused when ComfyUI patches them, and the patches already
    made are undone (the next plain-model prompt matches the Python API bit for bit within FLAC rounding)."""
    lora = _lora(fixtures_dir, tmp_path, "huge_alpha_lora.safetensors", alpha=1e30)
    with placed(sa3_server, "models/loras/huge_alpha_lora.safetensors", lora) as name:
        error = run_error(comfy, graph(lora=(name, 1.0)))
    assert error["node_id"] in ("2", "4")  # whichever loads a patched part first (the conditioner: Text Encode)
    assert "larger than 65504" in error["exception_message"] and "huge_alpha_lora" in error["exception_message"]
    assert_serves(comfy, reference_model)


# --------------------------------------------------------------------------------------------------
# 2, 8. Input audio: awkward and absurd rates, many channels
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [4001, 44101])
def test_awkward_sample_rates_succeed(rate: int, sa3_server: ComfyServer, comfy: ComfyClient, clip_file) -> None:
    """4001 Hz took +2.8 GiB and 13 s; 44101 Hz asked torchaudio for one 7.8 GB tensor."""
    clip = clip_file(f"tone_{rate}.wav", tone(1.0, rate), rate)
    result = comfy.run(with_audio(graph(), clip, "init"), timeout_s=300)
    assert result.ok, result.messages
    assert len(result.files("6")) == 1


def test_an_absurd_sample_rate_is_a_node_error(sa3_server: ComfyServer, comfy: ComfyClient, clip_file) -> None:
    clip = clip_file("tone_500.wav", tone(1.0, 500), 500)
    error = run_error(comfy, with_audio(graph(), clip, "init"))
    assert error["node_id"] == "8"
    assert "sample rate 500 Hz is outside 1000..384000 Hz" in error["exception_message"]
    assert_serves(comfy)


def test_an_eight_channel_clip_keeps_its_front_pair_and_the_log_says_so(
    sa3_server: ComfyServer, comfy: ComfyClient, clip_file
) -> None:
    clip = clip_file("eight_channels.wav", tone(1.0, 48000, channels=8), 48000)
    result = comfy.run(with_audio(graph(), clip, "init"), timeout_s=300)
    assert result.ok, result.messages
    assert "init_audio has 8 channels; using the first 2 (front left and right)" in sa3_server.log_text()


# --------------------------------------------------------------------------------------------------
# 6, 8. Model folders: one T5Gemma folder is one encoder; messages never show the server's paths
# --------------------------------------------------------------------------------------------------


def test_auto_text_encoder_takes_the_one_t5gemma_folder(
    sa3_server: ComfyServer, comfy: ComfyClient, sa3_tiny_model: Path
) -> None:
    """The folder's own model.safetensors was listed as a second encoder, and auto refused ("several")."""
    # Only the folder: the session's Comfy-Org text-encoder file (the workflows' one) is set aside meanwhile.
    with (
        set_aside(sa3_server, f"models/text_encoders/{SA3_TEXT_ENCODER_FILE}"),
        placed(sa3_server, "models/text_encoders/t5gemma-b-b-ul2", sa3_tiny_model / "t5gemma-b-b-ul2"),
        placed(
            sa3_server, "models/stable_audio_3/stable_audio_3_tiny.safetensors", sa3_tiny_model / "model.safetensors"
        ) as single_file,
    ):
        options = comfy.object_info("SA3_ModelLoader")["SA3_ModelLoader"]["input"]["required"]["text_encoder"][1]
        assert options["options"] == ["auto", "t5gemma-b-b-ul2"]
        error = run_error(comfy, graph(model=single_file))
    # auto found its encoder; loading then stops at the weights, whose tiny shapes are not the small preset's
    assert error["node_id"] == "1"
    message = error["exception_message"]
    assert "several T5Gemma" not in message
    assert "models/stable_audio_3/stable_audio_3_tiny.safetensors: tensors do not match" in message
    assert_no_absolute_paths(message, sa3_server)


def test_a_missing_model_is_named_without_the_servers_paths(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(graph(model="no-such-model"))
    details = " ".join(e["details"] for e in rejected.value.node_errors["1"]["errors"])
    assert "'no-such-model' not found in models/stable_audio_3 or models/checkpoints" in details
    assert_no_absolute_paths(details, sa3_server)
