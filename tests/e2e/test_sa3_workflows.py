"""The example workflows on a real ComfyUI 0.3.75 server, through the API and through the real frontend.

Every API-format file in workflows/api/ is queued with POST /prompt; every UI-format file in workflows/ is
dropped onto the frontend's canvas and queued with its Run command. Each run must succeed and save FLAC files
of the expected length and channel count whose samples equal what the sa3_core Python API
(`StableAudioModel.generate`, same seed and settings) returns for the same request.

The API runs also save the latents (a core SaveLatent added after every sampler and Init Audio node) and
compare them with `generate(return_latents=True)` and `encode_audio` within relative L2 1e-5: on the tiny
model a wrong seed, prompt, mask, LoRA or init audio in any node moves them by O(1e-2..1) (the init audio only
through the Init Audio node's own latents: at noise level 0.9 a random-weight DiT keeps ~1e-6 of it).

Tolerance: SaveAudio writes 16-bit FLAC, which rounds each sample to a multiple of 1/32768 (at most half a
step off, a full step where the encoder truncates), so we allow 2/32768. The float computations themselves
are the same operations in the same order on the same CPU; in practice they differ by < 1e-6.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from comfy_host import ComfyClient, ComfyServer, PromptResult, comparable_prompt, decode_audio
from frontend import ComfyFrontend, frozen
from sa3_assets import (
    SA3_LORAS,
    reset_cache,
    sa3_example_clip,
    saved_latent,
    with_latent_savers,
)
from sa3_core.pipeline import StableAudioModel
from tests.helpers import relative_l2

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "comfyui-stable-audio-3"  # as conftest links the repository into custom_nodes/
WORKFLOWS = REPO_ROOT / "workflows"
SAMPLE_RATE = 44100
ATOL = 2 / 32768  # 16-bit FLAC quantisation (see the module docstring)
LATENT_TOLERANCE = 1e-5  # relative L2; float32 saved as is, the same operations (in practice < 1e-6)
SAMPLER, INIT_AUDIO = "SA3_RFSampler", "SA3_InitAudioEncode"  # the nodes whose latents the API runs save


def example_input() -> tuple[int, torch.Tensor]:
    """The shipped example clip (workflows/input/sa3_example_clip.flac) as LoadAudio decodes it (int16 / 2**15)."""
    rate, samples = sa3_example_clip()
    return rate, torch.from_numpy(samples)


def with_loras(model: StableAudioModel, fixtures_dir: Path, call: Callable[[], Any]) -> Any:
    """The lora_stack workflow's chain: style_a at 1.0 on both parts, then style_b (DoRA) at 0.5 on the DiT only."""
    model.load_lora([fixtures_dir / "loras" / name for name in SA3_LORAS])
    try:
        model.set_lora_strength(1.0, lora_index=0)
        model.set_lora_strength(0.5, lora_index=1, target="dit")
        model.set_lora_strength(0.0, lora_index=1, target="conditioner")
        return call()
    finally:
        model.unload_lora()


# What each workflow computes, as a StableAudioModel.generate call (steps / cfg None = the model's defaults,
# as the sampler's 0). The keys are the workflow file stems.
REFERENCES: dict[str, dict[str, Any]] = {
    "sa3_text_to_audio": dict(
        prompt="TrackType: Music, VocalType: Instrumental, Genre: Ambient, Instruments: Synth, "
        "Piano, Mood: Calm, Warm, 90 BPM, Key: D minor, warm analog synth pads with soft "
        "piano",
        duration=10.0,
        seed=42,
    ),  # the Prompt Builder's output
    "sa3_audio_to_audio": dict(
        prompt="dark techno drums with deep bass", duration=4.0, seed=7, init_audio="example", init_noise_level=0.9
    ),
    "sa3_inpainting": dict(
        prompt="bright jazz guitar",
        duration=4.0,
        seed=11,
        inpaint_audio="example",
        inpaint_mask_start_seconds=[0.5, 2.5],
        inpaint_mask_end_seconds=[1.0, 3.5],
    ),
    "sa3_continuation": dict(
        prompt="slow ambient strings, warm",
        duration=8.0,
        seed=5,
        inpaint_audio="example",
        inpaint_mask_start_seconds=4.0,
        inpaint_mask_end_seconds=8.0,
    ),
    "sa3_batch_prompts": dict(
        prompt=["soft rain on a window", "fast jazz drums", "low thunder, dark"],
        duration=[3.0, 2.0, 1.5],
        batch_size=3,
        seed=123,
    ),
    "sa3_lora_stack": dict(prompt="house music, bright synth, bass", duration=8.0, seed=2024, loras=True),
}
# Which node saves the audio in each workflow (the SaveAudio node id in the API file).
SAVE_NODE = {
    name: next(
        i
        for i, n in json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()).items()
        if n["class_type"] == "SaveAudio"
    )
    for name in REFERENCES
}
NAMES = sorted(REFERENCES)


@pytest.fixture(scope="module")
def workflow_reference_model(sa3_tiny_single_files: tuple[Path, Path]) -> StableAudioModel:
    """The files the workflows' loader names (the Comfy-Org layout of the tiny model)."""
    model_file, text_encoder_file = sa3_tiny_single_files
    return StableAudioModel.from_pretrained(
        model_file, device="cpu", dtype=torch.float32, text_encoder_path=text_encoder_file
    )


@dataclass
class Expected:
    """What the Python API computes for one workflow."""

    audio: list[np.ndarray]  # each batch item, (2, int(duration * sr)) float32
    latents: torch.Tensor  # the sampler's output, (B, 256, L)
    init_latents: torch.Tensor | None  # the Init Audio node's output (B, 256, L), for audio-to-audio


@pytest.fixture(scope="module")
def reference(workflow_reference_model: StableAudioModel, fixtures_dir: Path) -> Callable[[str], Expected]:
    """name -> what generate (and, for the init audio, encode_audio) returns for that workflow (computed once)."""
    cache: dict[str, Expected] = {}

    def expected(name: str) -> Expected:
        if name not in cache:
            kwargs = dict(REFERENCES[name])
            use_loras = kwargs.pop("loras", False)
            for key in ("init_audio", "inpaint_audio"):
                if kwargs.get(key) == "example":
                    kwargs[key] = example_input()

            def call() -> tuple[Any, torch.Tensor]:
                return workflow_reference_model.generate(**kwargs), workflow_reference_model.generate(
                    **kwargs, return_latents=True
                )

            audio, latents = with_loras(workflow_reference_model, fixtures_dir, call) if use_loras else call()
            init_latents = None
            if "init_audio" in kwargs:
                batch = kwargs.get("batch_size", 1)
                window = workflow_reference_model.plan_window([kwargs["duration"]] * batch)
                init_latents = workflow_reference_model.encode_audio(kwargs["init_audio"], window).expand(batch, -1, -1)
            cache[name] = Expected([item.numpy() for item in audio], latents, init_latents)
        return cache[name]

    return expected


def api_workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def ui_workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def check_saved_audio(comfy: ComfyClient, result: PromptResult, name: str, expected: list[np.ndarray]) -> None:
    """One 44.1 kHz stereo FLAC per batch item, as long as the longest item; each item equals the Python API's
    output, and shorter items are silent after their own duration."""
    assert result.ok, result.messages
    files = result.files(SAVE_NODE[name])
    assert len(files) == len(expected)
    longest = max(item.shape[-1] for item in expected)
    for file_ref, want in zip(files, expected):
        waveform, rate = decode_audio(comfy.view(file_ref))
        assert rate == SAMPLE_RATE
        assert waveform.shape == (2, longest)
        np.testing.assert_allclose(waveform[:, : want.shape[-1]], want, rtol=0, atol=ATOL)
        assert not waveform[:, want.shape[-1] :].any()
        assert np.abs(want).max() > 100 * ATOL  # a real signal, not silence on both sides


def check_saved_latents(
    server: ComfyServer, result: PromptResult, graph: dict[str, Any], savers: dict[str, str], expected: Expected
) -> None:
    """Each saved latent (see with_latent_savers) equals the Python API's: the sampler's output its latents,
    the Init Audio node's output the encoded clip."""
    kinds = sorted(graph[node]["class_type"] for node in savers.values())
    assert kinds == ([INIT_AUDIO] if expected.init_latents is not None else []) + [SAMPLER]
    for saver, node in savers.items():
        want = expected.latents if graph[node]["class_type"] == SAMPLER else expected.init_latents
        got = saved_latent(server.output_dir, result, saver)
        assert got.shape == want.shape
        assert relative_l2(got, want) <= LATENT_TOLERANCE, f"{graph[node]['class_type']} (node {node})"


def cached_pack_nodes(result: PromptResult, graph: dict[str, Any]) -> list[str]:
    """Nodes of the pack (or the SaveAudio) that ComfyUI served from its cache instead of running them.
    (LoadAudio may come from the cache: reset_cache's barrier prompt has just loaded the same clip.)"""
    cached = (result.message("execution_cached") or {}).get("nodes", [])
    return [node for node in cached if graph[node]["class_type"] != "LoadAudio"]


def test_every_workflow_has_both_formats_and_a_reference() -> None:
    ui = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    api = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))
    assert ui == api == NAMES


def test_templates_list_the_ui_workflows(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    assert not sa3_server.import_failures()
    assert sorted(comfy.workflow_templates()[PACK_FOLDER]) == NAMES  # the API files stay out of the browser
    assert comfy.workflow_template(PACK_FOLDER, "sa3_text_to_audio") == ui_workflow("sa3_text_to_audio")


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_matches_python_api(
    name: str, sa3_server: ComfyServer, comfy: ComfyClient, reference: Callable[[str], Expected]
) -> None:
    reset_cache(comfy)
    graph, savers = with_latent_savers(api_workflow(name), (SAMPLER, INIT_AUDIO))
    result = comfy.run(graph, timeout_s=300)
    assert not cached_pack_nodes(result, graph)
    check_saved_audio(comfy, result, name, reference(name).audio)
    check_saved_latents(sa3_server, result, graph, savers, reference(name))


@pytest.mark.parametrize("name", NAMES)
def test_frontend_loads_and_runs_ui_workflow(
    name: str,
    sa3_server: ComfyServer,
    comfy: ComfyClient,
    frontend: ComfyFrontend,
    object_info: dict[str, Any],
    reference: Callable[[str], Expected],
) -> None:
    workflow = ui_workflow(name)
    assert not frontend.missing_node_types(workflow)
    frontend.drop_workflow(workflow, f"{name}.json")  # the drag-and-drop path
    # The frontend checks a dropped file against its workflow schema and only warns (in a toast) when it fails.
    assert "Invalid workflow" not in frontend.page.content()
    assert comparable_prompt(frontend.graph_to_prompt(), object_info) == comparable_prompt(
        api_workflow(name), object_info
    )

    reset_cache(comfy)
    prompt_id = frontend.queue()
    with frozen(frontend):
        result = comfy.wait_for(prompt_id, timeout_s=300)
    assert not cached_pack_nodes(result, api_workflow(name))
    check_saved_audio(comfy, result, name, reference(name).audio)
