"""What the pack's e2e tests share: the names the example workflows in workflows/ refer to, the example clip,
and a way to make the server run every node again."""

from __future__ import annotations

from typing import Any

from comfy_host import ComfyClient

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
    barrier = {"1": {"class_type": "LoadAudio", "inputs": {"audio": SA3_EXAMPLE_INPUT}},
               "2": {"class_type": "PreviewAudio", "inputs": {"audio": ["1", 0]}}}
    assert comfy.run(barrier, timeout_s=60).ok
