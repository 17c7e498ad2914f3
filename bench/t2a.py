"""Text-to-audio benchmark at the real SA3 shapes (random weights), stage by stage.

    python -m bench.t2a --variant small --seconds 10 30 120 --steps 8 --repeats 3
    python -m bench.t2a --variant medium --seconds 120 --repeats 1        # many minutes on 2 cores

For every duration it runs the StableAudioModel stages the pipeline runs (plan_window, initial_noise,
encode_prompts + dit_conditioning, sample_latents, decode_latents) and prints, per stage, the median wall
time, the peak resident memory of the process during the stage (weights of every model included), and
the ratio to the arithmetic floor: the stage's counted FLOPs (see bench/flops.py) over the fp32 matmul
rate measured on this machine just before (all of torch's threads, GEMMs of the model's own shapes).
A table of all durations comes last. Timings on a shared machine are noisy: the 1-minute load average is
printed with every duration.

Text encode: the prompt cache of the text encoder is cleared before each repeat, so every repeat really
encodes (a re-run with the same prompt costs nothing in the pipeline).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import torch

from sa3_core.precision import component_dtypes
from sa3_core.sampling import GuidanceOptions

from .flops import FlopModel, count_flops
from .measure import GiB, StageMeter, load_average, machine_summary, matmul_rates, rss_bytes
from .random_model import random_model

PROMPT = "warm ambient piano with soft drums and a slow bass line"
STAGES = ("text", "sampling", "decode")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHT_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def gemm_shapes(model, tokens: int) -> list[tuple[int, int, int]]:
    """The DiT's own linear shapes at this sequence length, plus SAME's at one decode chunk and T5Gemma's."""
    e = model.config.dit.embed_dim
    qkv = 5 * e if model.config.dit.differential else 3 * e
    d = model.config.autoencoder.decoder.width
    same_tokens = 128 * 17  # one 128-latent decode chunk
    return [
        (tokens, e, qkv),
        (tokens, e, 8 * e),
        (tokens, 4 * e, e),
        (same_tokens, d, 5 * d),
        (same_tokens, d, 6 * d),
        (256, 768, 2048),
    ]


def disable_step_constants(model) -> None:
    """The "before" of the step-constant optimisation: the guided model computes the constant conditioning
    once per sampling run and passes it to every DiT forward (``constants=``); dropping it there makes every
    step recompute the prompt embedding, cross-attention K/V and the other constant inputs (the one unused
    computation per run stays: 1/steps of that work)."""
    forward = model.dit.forward
    model.dit.forward = lambda *args, constants=None, **kwargs: forward(*args, **kwargs)


def run_once(model, seconds: float, steps: int, seed: int, cfg_scale: float, chunked: bool | None):
    """One text-to-audio generation through the stages; returns {stage: StageResult} and the audio."""
    results = {}
    model.text_encoder.clear_cache()
    window = model.plan_window([seconds])
    noise, generator = model.initial_noise(window, seed)
    with StageMeter() as meter:
        cond = model.encode_prompts([PROMPT], [seconds], [""] if cfg_scale != 1 else None)
        dit_cond = model.dit_conditioning(cond, window, None)
    results["text"] = meter.result
    with StageMeter() as meter:
        latents = model.sample_latents(
            noise, generator, dit_cond, window, steps=steps, guidance=GuidanceOptions(cfg_scale=cfg_scale)
        )
    results["sampling"] = meter.result
    with StageMeter() as meter:
        audio = model.decode_latents(latents, window, chunked=chunked)
    results["decode"] = meter.result
    audio = audio[..., : window.output_samples()[0]]
    if not torch.isfinite(audio).all():
        raise RuntimeError("non-finite audio: the random model diverged, timings would be meaningless")
    return results, window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("small", "medium"), default="small")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0, 120.0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cfg", type=float, default=1.0, help="cfg_scale (1 = the post-trained default)")
    parser.add_argument(
        "--dtype",
        choices=("auto",) + tuple(DTYPES),
        default="auto",
        help="compute dtype of the DiT and text encoder; auto: sa3_core.precision's choice",
    )
    parser.add_argument(
        "--same-dtype",
        choices=("auto",) + tuple(DTYPES),
        default="auto",
        help="SAME's dtype; auto: sa3_core.precision's choice for the DiT's dtype",
    )
    parser.add_argument(
        "--weights",
        choices=("default",) + tuple(WEIGHT_DTYPES),
        default="default",
        help="weight storage of the DiT's and text encoder's matrices (fp8: float8, cast at use)",
    )
    parser.add_argument("--backend", default="auto", help="attention backend: auto, sdpa, band, flash")
    parser.add_argument("--text-encoder", choices=("real", "tiny"), default="real")
    parser.add_argument("--no-step-constants", action="store_true", help="recompute constant conditioning every step")
    parser.add_argument("--unchunked", action="store_true", help="decode in one pass (unbounded memory)")
    parser.add_argument("--compile", choices=("none", "dit", "same", "all"), default="none")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    precision_log = logging.getLogger("sa3_core.precision")  # the dtype policy's choices and the CPU probe
    precision_log.addHandler(logging.StreamHandler(sys.stdout))
    precision_log.setLevel(logging.INFO)
    print(f"machine: {machine_summary()}")
    dtypes = component_dtypes("cpu", DTYPES.get(args.dtype), DTYPES.get(args.same_dtype))
    weight_dtype = WEIGHT_DTYPES.get(args.weights)
    started = time.perf_counter()
    model = random_model(
        args.variant,
        dtype=dtypes.dit,
        autoencoder_dtype=dtypes.autoencoder,
        weight_dtype=weight_dtype,
        text_encoder=args.text_encoder,
        attention_backend=args.backend,
    )
    print(
        f"built random {args.variant} model ({args.text_encoder} T5Gemma) in {time.perf_counter() - started:.1f} s,"
        f" RSS {rss_bytes() / GiB:.2f} GiB"
    )
    if args.compile != "none":
        parts = {"dit": ("dit",), "same": ("autoencoder",), "all": ("dit", "autoencoder")}[args.compile]
        model.compile(parts, mode=args.compile_mode)
    flop_model = FlopModel(model.config, args.backend)
    chunked = False if args.unchunked else None
    names = {v: k for k, v in {**DTYPES, **WEIGHT_DTYPES}.items()}
    settings = (
        f"{args.steps} steps, cfg {args.cfg:g}, DiT/text {names[dtypes.dit]} ({args.dtype}), "
        f"SAME {names[dtypes.autoencoder]} ({args.same_dtype}), weights {args.weights}, backend {args.backend}, "
        f"step constants {'off' if args.no_step_constants else 'on'}, "
        f"decode {'unchunked' if args.unchunked else 'chunked'}, "
        f"compile {args.compile}"
    )
    print(f"settings: {settings}")

    if args.no_step_constants:
        disable_step_constants(model)
    if not args.no_warmup:  # first-call costs (thread pools, kernel setup, compilation) stay out of the medians
        started = time.perf_counter()
        run_once(model, 10.0, 1, 0, args.cfg, chunked)
        print(f"warm-up (1 step, 10 s): {time.perf_counter() - started:.1f} s")

    model.text_encoder.clear_cache()  # count a real encoder forward, not a cache hit
    text_flops, _ = count_flops(model.text_encoder.encode, [PROMPT])
    rows = []
    for seconds in args.seconds:
        window = model.plan_window([seconds])
        tokens = window.latents + model.config.dit.num_memory_tokens
        load_before = load_average()
        rate, cpu_rate = matmul_rates(gemm_shapes(model, tokens))
        # With guidance every step is one forward on a doubled batch (batched CFG).
        dit = flop_model.dit_forward(2 if args.cfg != 1 else 1, window.latents)
        # Floors: what the model's math needs. Constant conditioning is needed once, not per step, and
        # the decode floor is the one-pass decode (the overlap of chunked decoding is overhead).
        floors = {
            "text": text_flops * (2 if args.cfg != 1 else 1),
            "sampling": dit.sampling(args.steps),
            "decode": flop_model.decode(1, window.latents, chunked=False),
        }
        executed = {
            "text": floors["text"],
            "sampling": args.steps * dit.forward if args.no_step_constants else floors["sampling"],
            "decode": flop_model.decode(1, window.latents, chunked=not args.unchunked),
        }
        repeats = []
        for r in range(args.repeats):
            results, _ = run_once(model, seconds, args.steps, r, args.cfg, chunked)
            repeats.append(results)
            line = ", ".join(f"{s} {results[s].wall_s:.2f} s" for s in STAGES)
            print(f"  {seconds:g} s, repeat {r + 1}/{args.repeats}: {line}", flush=True)
        rate_after, cpu_rate_after = matmul_rates(gemm_shapes(model, tokens))
        rate, cpu_rate = (rate + rate_after) / 2, (cpu_rate + cpu_rate_after) / 2
        load = (load_before + load_average()) / 2
        row = {
            "seconds": seconds,
            "latents": window.latents,
            "load": load,
            "gemm_gflops": rate / 1e9,
            "gemm_gflops_per_cpu_s": cpu_rate / 1e9,
            "stages": {},
        }
        for stage in STAGES:
            walls = [res[stage].wall_s for res in repeats]
            wall = statistics.median(walls)
            cpu = statistics.median(res[stage].cpu_s for res in repeats)
            floor_s = floors[stage] / rate
            row["stages"][stage] = {
                "wall_s": wall,
                "walls": walls,
                "cpu_s": cpu,
                # CPU seconds used over CPU seconds the GEMMs would need: robust to other processes' load.
                "cpu_ratio": cpu / (floors[stage] / cpu_rate),
                "peak_rss_gib": max(res[stage].peak_rss for res in repeats) / GiB,
                "rss_before_gib": repeats[-1][stage].rss_before / GiB,
                "floor_gflop": floors[stage] / 1e9,
                "executed_gflop": executed[stage] / 1e9,
                "floor_s": floor_s,
                "ratio": wall / floor_s,
                "rss_method": repeats[-1][stage].method,
            }
        rows.append(row)
        print_duration(row)

    print(f"\n== {args.variant} at real shapes, text-to-audio, {settings}; medians of {args.repeats} ==")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "variant": args.variant,
                    "settings": settings,
                    "machine": machine_summary(),
                    "text_encoder": args.text_encoder,
                    "repeats": args.repeats,
                    "rows": rows,
                },
                handle,
                indent=1,
            )
    return 0


def print_duration(row: dict) -> None:
    print(
        f"  {row['seconds']:g} s ({row['latents']} latents): load {row['load']:.1f}, "
        f"fp32 GEMM {row['gemm_gflops']:.0f} GFLOP/s"
    )
    for stage, s in row["stages"].items():
        print(
            f"    {stage:9s} {s['wall_s']:8.2f} s (CPU {s['cpu_s']:7.1f} s)  peak RSS {s['peak_rss_gib']:6.2f} GiB  "
            f"run {s['executed_gflop']:8.0f} / floor {s['floor_gflop']:8.0f} GFLOP = {s['floor_s']:7.2f} s  "
            f"ratio {s['ratio']:5.2f} (CPU-time ratio {s['cpu_ratio']:.2f})"
        )


def table(rows: list[dict]) -> str:
    header = (
        "| audio | stage | wall s (median) | peak RSS GiB | GFLOP run / floor | floor s | wall / floor | "
        "CPU-time ratio | load | GEMM GFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in rows:
        total_wall = sum(s["wall_s"] for s in row["stages"].values())
        total_floor = sum(s["floor_s"] for s in row["stages"].values())
        for stage, s in row["stages"].items():
            lines.append(
                f"| {row['seconds']:g} s | {stage} | {s['wall_s']:.2f} | {s['peak_rss_gib']:.2f} | "
                f"{s['executed_gflop']:.0f} / {s['floor_gflop']:.0f} | {s['floor_s']:.2f} | {s['ratio']:.2f} | "
                f"{s['cpu_ratio']:.2f} | {row['load']:.1f} | "
                f"{row['gemm_gflops']:.0f} |"
            )
        peak = max(s["peak_rss_gib"] for s in row["stages"].values())
        lines.append(
            f"| {row['seconds']:g} s | **total** | **{total_wall:.2f}** | **{peak:.2f}** | "
            f"{sum(s['executed_gflop'] for s in row['stages'].values()):.0f} / "
            f"{sum(s['floor_gflop'] for s in row['stages'].values()):.0f} | {total_floor:.2f} | "
            f"{total_wall / total_floor:.2f} | | | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
