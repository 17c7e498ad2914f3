"""Error of each precision against float32: per stage at the real shapes, and end to end on the golden cases.

    python -m bench.precision_error                          # small-music stages + golden cases, CPU
    python -m bench.precision_error --variant medium --stages-only
    python -m bench.precision_error --device cuda            # the same on a GPU (bench/gpu.sh)

Per stage (random weights at the real shapes, ``bench/random_model.py``; the same seed gives every
precision the same float32-drawn weights): one DiT forward (the velocity at t = 0.5 on random latents and
conditioning, ``--seconds`` of audio), one SAME decode of random latents (chunked, as generation decodes),
and the T5Gemma-b encoder on one prompt. Whole generations at real shapes with random weights decorrelate
even in fp16 (the sampler amplifies any difference), so the real-shape comparison is per stage.

End to end: every golden case of ``../shared/fixtures/cases`` (``--fixtures``) (tiny checkpoints, the official fp32
outputs) generated in each precision; the error is against the official output (so the fp32 row is this
implementation's agreement with the official code). LoRA cases are skipped for float8 weight storage,
which refuses LoRAs.

Precisions: ``fp32``; ``bf16`` / ``fp16`` (weights and compute, SAME included); ``fp8_e4m3fn`` /
``fp8_e5m2`` (the DiT's and the text encoder's weight matrices stored in float8, computing in fp32;
SAME stays fp32); ``fp8_e4m3fn+bf16`` (float8 storage, bf16 compute). Errors are relative L2 norms
``||x - x_fp32|| / ||x_fp32||``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from sa3_core.checkpoint import SA3Components, build_modules, load_module_weights
from sa3_core.ops import store_weights
from sa3_core.pipeline import StableAudioModel

from .measure import load_average, machine_summary, relative_l2
from .random_model import random_model
from .t2a import PROMPT

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
GOLDEN_TOLERANCE = 1e-4  # the fixture contract (tests/core/test_generate.py)


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype  # compute dtype of the DiT and text encoder (their weights too, unless weight_dtype)
    autoencoder_dtype: torch.dtype
    weight_dtype: torch.dtype | None = None


PRECISIONS = {
    p.name: p
    for p in (
        Precision("fp32", torch.float32, torch.float32),
        Precision("bf16", torch.bfloat16, torch.bfloat16),
        Precision("fp16", torch.float16, torch.float16),
        Precision("fp8_e4m3fn", torch.float32, torch.float32, torch.float8_e4m3fn),
        Precision("fp8_e5m2", torch.float32, torch.float32, torch.float8_e5m2),
        Precision("fp8_e4m3fn+bf16", torch.bfloat16, torch.float32, torch.float8_e4m3fn),
    )
}


# --------------------------------------------------------------------------------------------------
# Per stage, real shapes
# --------------------------------------------------------------------------------------------------


def stage_inputs(model: StableAudioModel, seconds: float) -> dict[str, torch.Tensor]:
    """Random, fixed (seeded, float32) inputs for one DiT forward and one SAME decode at ``seconds``."""
    window = model.plan_window([seconds])
    generator = torch.Generator().manual_seed(1234)
    dim = model.config.dit.cond_token_dim
    return {
        "x": torch.randn(1, model.autoencoder.latent_dim, window.latents, generator=generator),
        "cross": torch.randn(1, 257, dim, generator=generator),
        "global": torch.randn(1, model.config.dit.global_cond_dim, generator=generator),
        "local": torch.zeros(1, 1 + model.autoencoder.latent_dim, window.latents),
        "mask": window.padding_mask(),
        # Latents of unit scale, as the sampler hands them to the decoder.
        "latents": torch.randn(1, model.autoencoder.latent_dim, window.latents, generator=generator),
    }


@torch.inference_mode()
def run_stages(model: StableAudioModel, inputs: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    dtype, same_dtype = model.dtype, next(model.autoencoder.parameters()).dtype
    on = {k: v.to(device) for k, v in inputs.items()}
    velocity = model.dit(
        on["x"].to(dtype),
        torch.tensor([0.5], device=device),
        on["cross"].to(dtype),
        on["global"].to(dtype),
        on["local"].to(dtype),
        on["mask"],
    )
    audio = model.autoencoder.decode_audio(on["latents"].to(same_dtype), chunked=True)
    model.text_encoder.clear_cache()
    hidden, _ = model.text_encoder.encode([PROMPT])
    return {
        "DiT forward": velocity.float().cpu(),
        "SAME decode": audio.float().cpu(),
        "text encoder": hidden.float().cpu(),
    }


def derive(reference: StableAudioModel, precision: Precision, device: str) -> StableAudioModel:
    """``reference``'s weights in ``precision`` on ``device``, loaded the way a checkpoint is (modules built
    on ``meta``, each tensor converted as it is assigned, float8 storage included)."""
    modules = build_modules(
        reference.config,
        device="meta",
        dtype=precision.dtype,
        autoencoder_dtype=precision.autoencoder_dtype,
        weight_dtype=precision.weight_dtype,
    )
    sources = (reference.dit, reference.autoencoder, reference.conditioners)
    for module, source in zip(modules.values(), sources):
        load_module_weights(module, source.state_dict(), device=device)
    dit, autoencoder, conditioners = (m.eval().requires_grad_(False) for m in modules.values())
    text = copy.deepcopy(reference.text_encoder).to(device, precision.dtype)
    if precision.weight_dtype is not None:
        store_weights(text.model, precision.weight_dtype)
    components = SA3Components(
        config=reference.config,
        dit=dit,
        autoencoder=autoencoder,
        conditioners=conditioners,
        text_encoder=text,
        source=f"{reference.components.source}, {precision.name}",
        layout="random",
    )
    return StableAudioModel(components, device=device, dtype=precision.dtype)


def stage_errors(variant: str, seconds: float, names: list[str], device: str) -> dict[str, dict[str, float]]:
    reference = random_model(variant)  # fp32 on the CPU; every precision is derived from these weights
    inputs = stage_inputs(reference, seconds)
    results, expected = {}, None
    for name in ["fp32"] + [n for n in names if n != "fp32"]:
        same = name == "fp32" and torch.device(device).type == "cpu"  # no second fp32 copy on the CPU
        model = reference if same else derive(reference, PRECISIONS[name], device)
        outputs = run_stages(model, inputs, device)
        del model
        gc.collect()
        if expected is None:
            expected = outputs
        results[name] = {stage: relative_l2(out, expected[stage]) for stage, out in outputs.items()}
        print(f"  {variant} {name}: " + ", ".join(f"{s} {e:.2e}" for s, e in results[name].items()), flush=True)
    return results


# --------------------------------------------------------------------------------------------------
# End to end, golden cases
# --------------------------------------------------------------------------------------------------


def case_output(model: StableAudioModel, spec: dict, reference: dict, fixtures: Path) -> torch.Tensor:
    """One golden case, as tests/core/test_generate.py runs it."""
    kwargs = dict(spec["generate_kwargs"])
    for name, audio in spec.get("audio_inputs", {}).items():
        kwargs[name] = (audio["sample_rate"], reference[audio["tensor"]])
    if spec.get("loras"):
        model.load_lora([fixtures / p for p in spec["loras"]], dora_mode="official")
    try:
        for call in spec.get("set_lora_strength_calls", []):
            model.set_lora_strength(call["strength"], lora_index=call["lora_index"])
        different_durations = isinstance(kwargs.get("duration"), list) and len(set(kwargs["duration"])) > 1
        # The official code returns the untrimmed window for different durations (we trim per item).
        return model.generate(**kwargs, truncate_output_to_duration=not different_durations)
    finally:
        model.unload_lora()


def case_errors(
    names: list[str], device: str, fixtures: Path, only: list[str] | None = None
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name in names:
        precision = PRECISIONS[name]
        models: dict[str, StableAudioModel] = {}
        results[name] = {}
        for path in sorted((fixtures / "cases").glob("*.json")):
            if only and path.stem not in only:
                continue
            spec = json.loads(path.read_text())
            if spec.get("loras") and precision.weight_dtype is not None:
                continue
            if spec["model"] not in models:
                models[spec["model"]] = StableAudioModel.from_pretrained(
                    fixtures / spec["model"],
                    device=device,
                    dtype=precision.dtype,
                    autoencoder_dtype=precision.autoencoder_dtype,
                    weight_dtype=precision.weight_dtype,
                )
            reference = load_file(path.with_suffix(".safetensors"))
            out = case_output(models[spec["model"]], spec, reference, fixtures)
            expected = reference["output"]
            results[name][path.stem] = relative_l2(out.reshape(expected.shape), expected)
        worst = max(results[name].values())
        print(f"  golden cases {name}: {len(results[name])} cases, worst {worst:.2e}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("small", "medium"), nargs="+", default=["small"])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length of the DiT forward and the decode")
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stages-only", action="store_true")
    parser.add_argument("--cases-only", action="store_true")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="the golden fixtures folder")
    parser.add_argument("--cases", nargs="+", default=None, help="only these golden cases (default: all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):  # a true fp32 reference: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(f"machine: {machine_summary()}; device {args.device}; load {load_average():.1f}")
    names = args.precisions
    stages = {} if args.cases_only else {v: stage_errors(v, args.seconds, names, args.device) for v in args.variant}
    cases = {} if args.stages_only else case_errors(names, args.device, args.fixtures, args.cases)

    if stages:
        print(
            f"\n| model | precision | DiT forward ({args.seconds:g} s) | SAME decode ({args.seconds:g} s) "
            f"| text encoder |"
        )
        print("|---|---|---|---|---|")
        for variant, rows in stages.items():
            for name, errors in rows.items():
                print(f"| {variant} | {name} | " + " | ".join(f"{errors[s]:.1e}" for s in errors) + " |")
    if cases:
        print("\n| precision | golden cases | median | worst (case) |\n|---|---|---|---|")
        for name, errors in cases.items():
            values = sorted(errors.values())
            worst = max(errors, key=errors.get)
            print(f"| {name} | {len(values)} | {values[len(values) // 2]:.1e} | {errors[worst]:.1e} ({worst}) |")
        if "fp32" in cases:
            worst = max(cases["fp32"].values())
            verdict = "PASS" if worst <= GOLDEN_TOLERANCE else "FAIL"
            print(
                f"golden fixtures in fp32 on {args.device}: worst relative L2 {worst:.1e} "
                f"(tolerance {GOLDEN_TOLERANCE:g}): {verdict}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "stages": stages, "cases": cases}, indent=1))
    return 1 if "fp32" in cases and max(cases["fp32"].values()) > GOLDEN_TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(main())
