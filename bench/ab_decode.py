"""A/B timing of chunked SAME decoding, whole official chunks (A) against trimmed pieces (B), interleaved.

    python -m bench.ab_decode --variant small --seconds 30 --rounds 3 [--threads 1]
    python -m bench.ab_decode --compile-b       # A = eager, B = torch.compile'd SAME blocks (both trimmed)

Random weights at the real shapes; both paths run in the same process on the same latents, alternately,
and the outputs are compared bit for bit. Wall and process CPU time are reported (see bench/ab_dit.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from sa3_core.checkpoint import AUTOENCODER_PREFIX, build_modules

from .flops import FlopModel
from .measure import load_average, machine_summary
from .random_model import meta_model, randomise_


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("small", "medium"), default="small")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile-b", action="store_true", help="B = compiled SAME blocks instead of trimming")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    plan = meta_model(args.variant)
    latents = plan.plan_window([args.seconds]).latents
    autoencoder = randomise_(
        build_modules(plan.config, device="meta")[AUTOENCODER_PREFIX], torch.Generator().manual_seed(0), "cpu"
    )
    flops = FlopModel(plan.config)
    z = torch.randn(1, 256, latents, generator=torch.Generator().manual_seed(1))
    compiled = None
    if args.compile_b:
        from sa3_core.pipeline import compile_blocks
        from sa3_core.same import SAMEBlock

        compiled = randomise_(
            build_modules(plan.config, device="meta")[AUTOENCODER_PREFIX], torch.Generator().manual_seed(0), "cpu"
        )
        compile_blocks(compiled, SAMEBlock)
    print(f"machine: {machine_summary()}")
    if compiled is None:
        a_name = f"whole chunks ({flops.decode(1, latents, True, trim=False) / 1e9:.0f} GFLOP)"
        b_name = f"trimmed ({flops.decode(1, latents, True, trim=True) / 1e9:.0f} GFLOP)"
    else:
        a_name, b_name = "eager", "torch.compile(SAME blocks)"
    print(
        f"{args.variant} decode of {args.seconds:g} s ({latents} latents), {torch.get_num_threads()} threads; "
        f"A = {a_name}, B = {b_name}"
    )

    def run(model, trim: bool) -> tuple[float, float, torch.Tensor]:
        with torch.inference_mode():
            start, cpu = time.perf_counter(), time.process_time()
            out = model.decode_audio(z, chunked=True, trim=trim)
            return time.perf_counter() - start, time.process_time() - cpu, out

    a_run = (autoencoder, False) if compiled is None else (autoencoder, True)
    b_run = (autoencoder, True) if compiled is None else (compiled, True)
    started = time.perf_counter()
    run(*a_run), run(*b_run)  # warm-up (and compilation)
    print(f"warm-up: {time.perf_counter() - started:.1f} s")
    walls, cpus = [], []
    for r in range(args.rounds):
        wa, ca, a = run(*a_run)
        wb, cb, b = run(*b_run)
        walls.append((wa, wb))
        cpus.append((ca, cb))
        print(
            f"  round {r + 1}: wall A {wa:.2f} B {wb:.2f} s (B/A {wb / wa:.3f}); CPU A {ca:.2f} B {cb:.2f} s "
            f"(B/A {cb / ca:.3f}); load {load_average():.1f}; outputs {_compare(a, b)}",
            flush=True,
        )
    for name, pairs in (("wall", walls), ("CPU", cpus)):
        ratio = statistics.median(p[1] / p[0] for p in pairs)
        print(
            f"median {name}: A {statistics.median(p[0] for p in pairs):.2f} s, "
            f"B {statistics.median(p[1] for p in pairs):.2f} s, "
            f"B/A {ratio:.3f} ({(1 - ratio) * 100:+.1f}% time saved)"
        )
    return 0


def _compare(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "identical"
    return f"rel L2 diff {((a - b).norm() / a.norm()).item():.1e}"


if __name__ == "__main__":
    sys.exit(main())
