"""The pack's nodes on a real ComfyUI 0.3.75 server: registration, caching, interruption, errors, LoRA isolation
and the sampler's settings, each checked against the sa3_core Python API where it produces audio: the saved
FLAC within 16-bit rounding and the sampler's latents (a core SaveLatent in every graph) within relative L2 1e-5.

The graphs here are small (2 s, 4 steps) variations of the text-to-audio workflow, built in code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from comfy_host import ComfyClient, ComfyServer, PromptRejected, decode_audio
from sa3_assets import (
    SA3_EXAMPLE_INPUT,
    SA3_LORAS,
    SA3_MODEL_NAME,
    SA3_SINGLE_FILE,
    SA3_TEXT_ENCODER_FILE,
    reset_cache,
    saved_latent,
)
from sa3_core.pipeline import StableAudioModel
from tests.helpers import relative_l2

SAMPLE_RATE = 44100
ATOL = 2 / 32768  # 16-bit FLAC quantisation; see test_sa3_workflows.py
LATENT_TOLERANCE = 1e-5  # relative L2 of the saved float32 latents; see test_sa3_workflows.py

# Node ids and the order of their inputs are public API: UI workflows store widget values by position and
# API prompts by name. Append new inputs at the end (optional); never rename or reorder.
NODE_INPUTS = {
    "SA3_ModelLoader": ["model", "text_encoder", "dtype", "attention", "weights"],
    "SA3_LoRAApply": ["model", "lora_name", "strength", "target"],
    "SA3_TextEncode": ["model", "prompt", "negative_prompt", "duration", "per_item_durations"],
    "SA3_EmptyLatent": ["model", "duration", "batch_size", "conditioning"],
    "SA3_InitAudioEncode": ["model", "latent", "audio", "noise_level"],
    "SA3_InpaintMask": ["model", "latent", "audio", "mode", "regions"],
    "SA3_RFSampler": ["model", "conditioning", "latent", "seed", "steps", "cfg", "apg_scale", "sampler", "shift"],
    "SA3_VAEDecode": ["model", "latent", "chunked", "peak"],
    "SA3_PromptBuilder": ["mode", "description", "genre", "instruments", "mood", "bpm", "key", "vocal_type", "format"],
    "SA3_Spectrogram": ["audio", "frequency_scale", "dynamic_range_db", "width", "height"],
}


def t2a_graph(
    prompt: str = "piano",
    *,
    duration: float = 2.0,
    seed: int = 1,
    steps: int = 4,
    batch: int = 1,
    negative: str = "",
    cfg: float = 0.0,
    apg: float = 1.0,
    sampler: str = "auto",
    shift: float = 0.0,
    latent_duration: float | None = None,
    loras: tuple[tuple[str, float, str], ...] = (),
) -> dict[str, Any]:
    """Loader -> [LoRAApply...] -> TextEncode + EmptyLatent -> Sampler -> VAEDecode -> SaveAudio, and the
    sampler's latents -> SaveLatent (node "7")."""
    graph: dict[str, Any] = {
        "1": {
            "class_type": "SA3_ModelLoader",
            "inputs": {"model": SA3_MODEL_NAME, "text_encoder": "auto", "dtype": "auto", "attention": "auto"},
        }
    }
    model = ["1", 0]
    for i, (name, strength, target) in enumerate(loras):
        node = f"l{i}"
        graph[node] = {
            "class_type": "SA3_LoRAApply",
            "inputs": {"model": model, "lora_name": name, "strength": strength, "target": target},
        }
        model = [node, 0]
    graph |= {
        "2": {
            "class_type": "SA3_TextEncode",
            "inputs": {"model": model, "prompt": prompt, "negative_prompt": negative, "duration": duration},
        },
        "3": {
            "class_type": "SA3_EmptyLatent",
            "inputs": {
                "model": model,
                "duration": duration if latent_duration is None else latent_duration,
                "batch_size": batch,
            },
        },
        "4": {
            "class_type": "SA3_RFSampler",
            "inputs": {
                "model": model,
                "conditioning": ["2", 0],
                "latent": ["3", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "apg_scale": apg,
                "sampler": sampler,
                "shift": shift,
            },
        },
        "5": {
            "class_type": "SA3_VAEDecode",
            "inputs": {"model": model, "latent": ["4", 0], "chunked": "auto", "peak": "clamp"},
        },
        "6": {"class_type": "SaveAudio", "inputs": {"audio": ["5", 0], "filename_prefix": "audio/sa3_server_test"}},
        "7": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["4", 0], "filename_prefix": "latents/sa3_server_test"},
        },
    }
    return graph


def saved_audio(comfy: ComfyClient, result) -> list[np.ndarray]:
    assert result.ok, result.messages
    items = []
    for file_ref in result.files("6"):
        waveform, rate = decode_audio(comfy.view(file_ref))
        assert rate == SAMPLE_RATE
        items.append(waveform)
    return items


def python_api(model: StableAudioModel, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio, latents) of one generate request."""
    return model.generate(**kwargs), model.generate(**kwargs, return_latents=True)


def assert_matches(
    server: ComfyServer, comfy: ComfyClient, result, expected: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """The graph's FLAC files and sampler latents equal the Python API's (audio, latents)."""
    audio, latents = expected
    saved = saved_audio(comfy, result)
    assert len(saved) == audio.shape[0]
    for got, want in zip(saved, audio.numpy()):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    got = saved_latent(server.output_dir, result, "7")
    assert got.shape == latents.shape
    assert relative_l2(got, latents) <= LATENT_TOLERANCE


def test_every_node_is_registered_with_stable_inputs(sa3_server: ComfyServer, object_info: dict[str, Any]) -> None:
    assert not sa3_server.import_failures()
    ours = {name: info for name, info in object_info.items() if name.startswith("SA3_")}
    assert set(ours) == set(NODE_INPUTS)
    for name, info in ours.items():
        order = info["input_order"]
        assert order.get("required", []) + order.get("optional", []) == NODE_INPUTS[name]
        assert info["category"].startswith("StableAudio3/")
        assert info["display_name"].startswith("Stable Audio 3")
        assert info["description"]
        for section in ("required", "optional"):
            for input_name, (_, options) in info["input"].get(section, {}).items():
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(info["output_tooltips"]), name


def test_loader_lists_models_and_text_encoders(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    inputs = comfy.object_info("SA3_ModelLoader")["SA3_ModelLoader"]["input"]["required"]
    # The official folder (not the files inside it) and the Comfy-Org file from models/checkpoints.
    assert inputs["model"][1]["options"] == sorted([SA3_MODEL_NAME, SA3_SINGLE_FILE])
    assert inputs["text_encoder"][1]["options"] == ["auto", SA3_TEXT_ENCODER_FILE]
    lora_options = comfy.object_info("SA3_LoRAApply")["SA3_LoRAApply"]["input"]["required"]["lora_name"][1]["options"]
    assert set(SA3_LORAS) <= set(lora_options)


def part_loads(server: ComfyServer) -> dict[str, int]:
    """How often ComfyUI's model management has loaded each part of the model (its log says so)."""
    log = server.log_text()
    return {part: log.count(f"Requested to load {part}") for part in ("SA3TextPart", "SA3DiTPart", "SA3VAEPart")}


def test_changing_only_the_prompt_reuses_the_loaded_model(
    sa3_server: ComfyServer, comfy: ComfyClient, reference_model: StableAudioModel
) -> None:
    reset_cache(comfy)  # start from nothing loaded, so the first run must load every part
    before = part_loads(sa3_server)
    first = comfy.run(t2a_graph("piano", seed=1001), timeout_s=300)
    assert first.ok, first.messages
    loaded = part_loads(sa3_server)
    assert all(loaded[part] == before[part] + 1 for part in loaded), (before, loaded)  # via load_models_gpu

    second = comfy.run(t2a_graph("soft drums", seed=1001), timeout_s=300)
    cached = (second.message("execution_cached") or {}).get("nodes", [])
    assert {"1", "3"} <= set(cached)  # the loader (and the empty latent) did not run again
    assert "2" not in cached
    assert part_loads(sa3_server) == loaded  # and no part was loaded again: the weights stayed in place
    assert_matches(
        sa3_server, comfy, second, python_api(reference_model, prompt="soft drums", duration=2.0, steps=4, seed=1001)
    )


def test_float8_weights_load_through_comfy_ops(
    sa3_server: ComfyServer, comfy: ComfyClient, sa3_tiny_model: Path
) -> None:
    """The Loader's weights fp8_e4m3fn: the DiT built from comfy.ops.manual_cast with float8 matrices gives
    what sa3_core's own float8 storage gives; a LoRA on it is refused with a clear error."""
    graph = t2a_graph("piano", seed=5)
    graph["1"]["inputs"]["weights"] = "fp8_e4m3fn"
    fp8 = StableAudioModel.from_pretrained(sa3_tiny_model, device="cpu", weight_dtype=torch.float8_e4m3fn)
    assert_matches(
        sa3_server,
        comfy,
        comfy.run(graph, timeout_s=300),
        python_api(fp8, prompt="piano", duration=2.0, steps=4, seed=5),
    )

    with_lora = t2a_graph("piano", seed=5, loras=((SA3_LORAS[0], 1.0, "dit and conditioner"),))
    with_lora["1"]["inputs"]["weights"] = "fp8_e4m3fn"
    result = comfy.run(with_lora, timeout_s=300)
    assert not result.ok and result.error["node_id"] == "l0"
    assert "float8" in result.error["exception_message"]
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize(
    "settings",
    [
        dict(cfg=3.0, apg=0.5, negative="noise", sampler="euler", shift=2.0),
        dict(cfg=4.0, apg=1.0, negative="", sampler="dpmpp", steps=3),
        dict(batch=2, sampler="rk4", steps=2),
    ],
    ids=["cfg-apg-negative-euler-shift", "cfg-dpmpp", "one-prompt-batch-rk4"],
)
def test_sampler_settings_match_the_python_api(
    settings: dict[str, Any], sa3_server: ComfyServer, comfy: ComfyClient, reference_model: StableAudioModel
) -> None:
    graph = t2a_graph("warm bass", seed=77, **settings)
    expected = python_api(
        reference_model,
        prompt="warm bass",
        duration=2.0,
        seed=77,
        steps=settings.get("steps", 4),
        batch_size=settings.get("batch", 1),
        cfg_scale=settings.get("cfg") or None,
        apg_scale=settings.get("apg", 1.0),
        negative_prompt=settings.get("negative") or None,
        sampler_type=settings.get("sampler"),
        dist_shift={"type": "flux", "alpha_min": settings["shift"], "alpha_max": settings["shift"]}
        if settings.get("shift")
        else None,
    )
    assert_matches(sa3_server, comfy, comfy.run(graph, timeout_s=300), expected)


def test_lora_changes_only_its_own_branch(
    sa3_server: ComfyServer, comfy: ComfyClient, reference_model: StableAudioModel, fixtures_dir: Path
) -> None:
    stack = ((SA3_LORAS[0], 0.8, "dit and conditioner"), (SA3_LORAS[1], 1.0, "dit"))

    def with_stack(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        reference_model.load_lora([fixtures_dir / "loras" / name for name in SA3_LORAS])
        try:
            reference_model.set_lora_strength(0.8, lora_index=0)
            reference_model.set_lora_strength(0.0, lora_index=1, target="conditioner")
            return python_api(reference_model, prompt="piano", duration=2.0, steps=4, seed=seed)
        finally:
            reference_model.unload_lora()

    # LoRA branch, then the plain model (its weights must be back to the base), then LoRA again.
    assert_matches(sa3_server, comfy, comfy.run(t2a_graph(seed=501, loras=stack), timeout_s=300), with_stack(501))
    assert_matches(
        sa3_server,
        comfy,
        comfy.run(t2a_graph(seed=502), timeout_s=300),
        python_api(reference_model, prompt="piano", duration=2.0, steps=4, seed=502),
    )
    assert_matches(sa3_server, comfy, comfy.run(t2a_graph(seed=503, loras=stack), timeout_s=300), with_stack(503))


def test_interrupt_stops_sampling_and_the_next_prompt_runs(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    long_run = t2a_graph("rain", seed=9, steps=1000)  # minutes if nothing stops it
    with comfy.events() as events:
        prompt_id = comfy.queue_prompt(long_run)
        events.wait_for("progress", lambda d: d.get("prompt_id") == prompt_id and d.get("node") == "4", timeout_s=180)
        comfy.interrupt(prompt_id)
        result = comfy.wait_for(prompt_id, timeout_s=120)
        steps_done = [
            m["data"]["value"]
            for m in events.drain()
            if m["type"] == "progress" and m["data"].get("prompt_id") == prompt_id
        ]
    assert result.interrupted and not result.ok
    assert result.message("execution_interrupted")["node_id"] == "4"
    assert max(steps_done) < 1000
    assert_next_prompt_runs(comfy)


_fresh_seeds = iter(range(10_000, 20_000))


def assert_next_prompt_runs(comfy: ComfyClient) -> None:
    """The server still serves: a good prompt with a seed never used before (so the sampler and decoder really
    run, not ComfyUI's cache) succeeds and saves audio."""
    result = comfy.run(t2a_graph("bass", seed=next(_fresh_seeds), steps=2), timeout_s=300)
    assert result.ok, result.messages
    assert "4" not in (result.message("execution_cached") or {}).get("nodes", [])
    assert len(result.files("6")) == 1


def inpaint_graph(regions: str) -> dict[str, Any]:
    graph = t2a_graph("guitar", duration=4.0)
    graph["7"] = {"class_type": "LoadAudio", "inputs": {"audio": SA3_EXAMPLE_INPUT}}
    graph["8"] = {
        "class_type": "SA3_InpaintMask",
        "inputs": {"model": ["1", 0], "latent": ["3", 0], "audio": ["7", 0], "mode": "regions", "regions": regions},
    }
    graph["4"]["inputs"]["latent"] = ["8", 0]
    return graph


@pytest.mark.parametrize(
    "node, graph, message",
    [
        ("8", inpaint_graph("0.5-1.0, 3.0-2.0"), "inpaint region 1: end 2.0 s must be after start 3.0 s"),
        ("8", inpaint_graph("0.5 to"), "write start-end in seconds"),
        (
            "1",
            t2a_graph()
            | {
                "1": {
                    "class_type": "SA3_ModelLoader",
                    "inputs": {"model": "no-such-model", "text_encoder": "auto", "dtype": "auto", "attention": "auto"},
                }
            },
            "not found",
        ),
    ],
    ids=["inverted-region", "unreadable-region", "missing-model"],
)
def test_bad_widget_value_is_a_node_error(
    node: str, graph: dict[str, Any], message: str, sa3_server: ComfyServer, comfy: ComfyClient
) -> None:
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(graph)
    errors = rejected.value.node_errors[node]["errors"]
    assert any(message in error["details"] for error in errors), errors
    assert_next_prompt_runs(comfy)


@pytest.mark.parametrize(
    "graph, node, message",
    [
        (t2a_graph(duration=200.0, latent_duration=2.0), "2", "above this model's maximum"),
        (t2a_graph(latent_duration=3.0), "4", "does not fit the latent"),
        (t2a_graph(sampler="lcm"), "4", "'lcm' is not one of"),
        (inpaint_graph("4.5-5.0"), "8", "at or after the end"),
    ],
    ids=["duration-above-model-max", "durations-disagree", "unknown-sampler", "region-after-the-end"],
)
def test_bad_input_at_run_time_is_a_node_error(
    graph: dict[str, Any], node: str, message: str, sa3_server: ComfyServer, comfy: ComfyClient
) -> None:
    result = comfy.run(graph, timeout_s=300)
    assert not result.ok and result.error is not None
    assert result.error["node_id"] == node
    assert message in result.error["exception_message"], result.error["exception_message"]
    assert_next_prompt_runs(comfy)
