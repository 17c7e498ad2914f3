"""What the pack's e2e tests share: the names the example workflows in workflows/ refer to, the example clip,
a way to make the server run every node again, how a server gets them, and core SaveLatent nodes that let a
test read the latents a graph computed (not only its 16-bit audio)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from comfy_host import ComfyClient, ComfyServer, PromptResult

SA3_MODEL_NAME = "stable-audio-3-small-music"  # the official folder name; in the tests a tiny random-weight model
# The Comfy-Org single files the workflows name (models/checkpoints, models/text_encoders); in the tests the same
# tiny model in that layout (sa3_core.tiny.write_tiny_single_files).
SA3_SINGLE_FILE = "stable_audio_3_small_music.safetensors"
SA3_TEXT_ENCODER_FILE = "t5gemma_b_b_ul2.safetensors"
SA3_EXAMPLE_CLIP = "sa3_example_clip.flac"  # shipped in workflows/input/; the pack copies it into input/
SA3_LORAS = ("style_a_lora.safetensors", "style_b_dora.safetensors")  # official-format LoRAs for the tiny model
# A test-only clip the server tests load: mono 22.05 kHz, so those graphs exercise resampling and mono -> stereo.
SA3_EXAMPLE_INPUT = "sa3_example_input.wav"
SA3_EXAMPLE_INPUT_RATE = 22050
SA3_EXAMPLE_INPUT_SECONDS = 4.0


def sa3_example_input_pcm() -> Any:
    """The example input clip: 4 s of a decaying two-tone chord, mono int16 (1, samples)."""
    import numpy as np

    t = np.arange(int(SA3_EXAMPLE_INPUT_SECONDS * SA3_EXAMPLE_INPUT_RATE)) / SA3_EXAMPLE_INPUT_RATE
    signal = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 330 * t)) * np.exp(-0.4 * t)
    return np.round(signal * 32767).astype("<i2")[None]


def sa3_example_clip() -> tuple[int, Any]:
    """The shipped example clip as Load Audio decodes it: (44100, float32 (2, samples) = int16 / 2**15), from
    the script that synthesized it (a test checks the shipped file holds exactly these samples)."""
    import numpy as np
    from make_example_clip import SAMPLE_RATE, synthesize

    return SAMPLE_RATE, synthesize().astype(np.float32) / 32768.0


def reset_cache(comfy: ComfyClient) -> None:
    """Unload every model and make the next prompt execute every node again (ComfyUI would otherwise serve an
    identical graph from its cache). POST /free only sets flags; the worker applies them when it wakes up or
    right after the prompt it is running, always before it takes the next one. So after one small prompt has
    finished, any prompt queued next runs on a reset cache with nothing loaded."""
    comfy.free()
    barrier = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": SA3_EXAMPLE_INPUT}},
        "2": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}},
    }
    assert comfy.run(barrier, timeout_s=60).ok


def with_latent_savers(graph: dict[str, Any], node_types: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy of an API graph with a core SaveLatent on the LATENT output of every node of ``node_types``.

    Returns the graph and {saver node id: id of the node it saves}. SaveLatent writes the latent's samples
    (float32, untouched) to output/latents/ as a safetensors file; see :func:`saved_latent`."""
    graph = copy.deepcopy(graph)
    savers = {}
    for node_id, node in list(graph.items()):
        if node["class_type"] in node_types:
            saver = f"save_latent_{node_id}"
            graph[saver] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": [node_id, 0], "filename_prefix": f"latents/sa3_test_{node_id}"},
            }
            savers[saver] = node_id
    return graph, savers


def saved_latent(output_dir: Path, result: PromptResult, saver: str) -> Any:
    """The tensor a SaveLatent node of a finished prompt wrote (ComfyUI's .latent file: safetensors)."""
    from safetensors.torch import load_file

    assert result.ok, result.messages
    [file_ref] = result.files(saver, "latents")
    return load_file(output_dir / file_ref["subfolder"] / file_ref["filename"])["latent_tensor"]


def install_sa3_assets(
    server: ComfyServer, tiny_model: Path, single_files: tuple[Path, Path], fixtures_dir: Path
) -> ComfyServer:
    """Put the tiny model in models/stable_audio_3 as an official folder and in models/checkpoints +
    models/text_encoders as Comfy-Org files (the names the workflows in workflows/ use), the fixture LoRAs in
    models/loras and a test clip in input/ (the pack itself copies its example clip there)."""
    import wave

    server.link(f"models/stable_audio_3/{SA3_MODEL_NAME}", tiny_model)
    model_file, text_encoder_file = single_files
    server.link(f"models/checkpoints/{SA3_SINGLE_FILE}", model_file)
    server.link(f"models/text_encoders/{SA3_TEXT_ENCODER_FILE}", text_encoder_file)
    for name in SA3_LORAS:
        server.link(f"models/loras/{name}", fixtures_dir / "loras" / name)
    pcm = sa3_example_input_pcm()
    with wave.open(str(server.input_dir / SA3_EXAMPLE_INPUT), "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(SA3_EXAMPLE_INPUT_RATE)
        out.writeframes(pcm.T.tobytes())
    return server
