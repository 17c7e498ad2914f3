"""Self-tests of the e2e host, with core ComfyUI nodes only: if these fail, the pack's e2e tests cannot be trusted."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from comfy_host import ComfyClient, ComfyServer, PromptRejected, comparable_prompt, decode_audio
from frontend import ComfyFrontend

WORKFLOWS = Path(__file__).parent / "workflows"
SAMPLE_RATE = 44100
FRAMES = 22050


@pytest.fixture(scope="module")
def selftest_wav(comfy_server: ComfyServer) -> np.ndarray:
    """A 0.5 s stereo 16-bit tone in the server's input/ folder (what LoadAudio lists); returns its samples."""
    t = np.arange(FRAMES) / SAMPLE_RATE
    samples = np.stack([0.25 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)])
    pcm = np.round(samples * 32767).astype("<i2")
    with wave.open(str(comfy_server.input_dir / "host_selftest.wav"), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.T.tobytes())
    return pcm / 32768.0


def load_workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / name).read_text())


def test_core_audio_nodes_are_available(object_info: dict[str, Any]) -> None:
    # nodes_audio.py imports torchaudio; without it these nodes silently vanish and the pack's examples break.
    assert {"LoadAudio", "SaveAudio", "PreviewAudio"} <= set(object_info)


def test_api_prompt_saves_flac_that_round_trips(comfy: ComfyClient, selftest_wav: np.ndarray) -> None:
    result = comfy.run(load_workflow("host_selftest.api.json"), timeout_s=60)

    assert result.ok, result.messages
    [saved] = result.files("2")
    assert saved["subfolder"] == "audio" and saved["type"] == "output"
    waveform, rate = decode_audio(comfy.view(saved))
    assert rate == SAMPLE_RATE
    assert waveform.shape == selftest_wav.shape
    np.testing.assert_allclose(waveform, selftest_wav, atol=1e-4)  # FLAC is lossless on 16-bit input


def test_invalid_prompt_is_rejected_with_node_errors(comfy: ComfyClient) -> None:
    graph = load_workflow("host_selftest.api.json")
    graph["1"]["inputs"]["audio"] = "no_such_file.wav"

    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(graph)

    assert rejected.value.error["type"] == "prompt_outputs_failed_validation"
    assert rejected.value.error_types("1"), rejected.value.body
    assert comfy.get("/system_stats").status_code == 200  # still serving


def test_frontend_converts_ui_workflow_to_the_api_graph(
    frontend: ComfyFrontend, comfy: ComfyClient, object_info: dict[str, Any], selftest_wav: np.ndarray
) -> None:
    ui_workflow = load_workflow("host_selftest.json")
    assert not frontend.missing_node_types(ui_workflow)

    expected = comparable_prompt(load_workflow("host_selftest.api.json"), object_info)
    frontend.load_workflow(ui_workflow)
    assert comparable_prompt(frontend.graph_to_prompt(), object_info) == expected
    frontend.drop_workflow(ui_workflow, "host_selftest.json")
    assert comparable_prompt(frontend.graph_to_prompt(), object_info) == expected

    result = comfy.wait_for(frontend.queue(), timeout_s=60)
    assert result.ok, result.messages
    [saved] = result.files("2")
    waveform, _ = decode_audio(comfy.view(saved))
    assert waveform.shape == selftest_wav.shape
