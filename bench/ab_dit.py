"""A/B timing of the DiT sampling loop: this working tree's sa3_core against an older commit's, interleaved.

    python -m bench.ab_dit --base ff8b5bd --variant small --seconds 30 --rounds 5
    python -m bench.ab_dit --base tree --compile-b --threads 1     # eager against torch.compile

``--base tree`` makes A the working tree too (to A/B an option: ``--compile-b``, ``--no-reuse-a``).

On a shared machine a before/after pair measured minutes apart mostly measures the other users. Here both
versions run in one process on the SAME weight tensors (the old DiT is built on ``meta`` and assigned the
new one's parameters), alternating A, B, A, B, ...; each round times ``--steps`` forwards with the same
conditioning, the way a sampler calls the model (its step constants computed once and passed to every
forward; in older trees, inside their ``reuse_step_constants`` scope).
The ratio of each adjacent pair is reported, then the median ratio. Outputs are compared too.

Both wall time and process CPU time are reported. With ``--threads 1`` the CPU time is the work itself,
nearly independent of other processes (no thread waits for a descheduled sibling), which makes it the
most reliable A/B measure on a loaded machine; wall time with all threads is what a user sees.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from sa3_core.checkpoint import DIT_PREFIX, build_modules, preset_config

from .measure import load_average, machine_summary, relative_l2
from .random_model import randomise_

REPO = Path(__file__).resolve().parents[1]


def import_base(commit: str, into: Path):
    """``sa3_core`` as it was at ``commit``, imported as the package ``sa3_core_base`` (relative imports)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "sa3_core"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / "sa3_core").rename(into / "sa3_core_base")
    sys.path.insert(0, str(into))
    return importlib.import_module("sa3_core_base.checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git commit of the 'before' sa3_core")
    parser.add_argument("--variant", choices=("small", "medium"), default="small")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile-b", action="store_true", help="torch.compile B's DiT blocks")
    parser.add_argument("--no-reuse-a", action="store_true", help="A recomputing its step constants every forward")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = preset_config(args.variant)
    new = randomise_(build_modules(config, device="meta")[DIT_PREFIX], torch.Generator().manual_seed(0), "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = sys.modules["sa3_core.checkpoint"] if args.base == "tree" else import_base(args.base, Path(tmp))
        old = checkpoint.build_modules(checkpoint.preset_config(args.variant), device="meta")[DIT_PREFIX]
        old.load_state_dict(new.state_dict(), assign=True, strict=True)  # shares the tensors: no copy
        old.eval()
        if args.compile_b:
            from sa3_core.dit import DiTBlock
            from sa3_core.pipeline import compile_blocks

            compile_blocks(new, DiTBlock)

        sr, ratio = 44100, 4096
        latents = int(round((args.seconds + 6.0) * sr / ratio))
        g = torch.Generator().manual_seed(1)
        b = args.batch
        x = torch.randn(b, 256, latents, generator=g)
        cross, glob = torch.randn(b, 257, 768, generator=g), torch.randn(b, 768, generator=g)
        local = torch.zeros(b, 257, latents)
        padding = torch.ones(b, latents, dtype=torch.bool)
        padding[:, int(args.seconds * sr / ratio) + 1 :] = False
        times = torch.linspace(1, 0.1, args.steps)

        def loop(model, reuse: bool = True) -> tuple[float, float, torch.Tensor]:
            # Trees before explicit step constants reused them inside a ``reuse_step_constants()`` scope.
            scope = getattr(model, "reuse_step_constants", None) if reuse else None
            explicit = reuse and scope is None and "constants" in inspect.signature(model.forward).parameters
            with torch.inference_mode(), scope() if scope else _null():
                start, cpu = time.perf_counter(), time.process_time()
                extra = dict(constants=model.step_constants(cross, glob, local, latents)) if explicit else {}
                for t in times:
                    out = model(x, t.expand(b), cross, glob, local, padding_mask=padding, **extra)
                return ((time.perf_counter() - start) / args.steps, (time.process_time() - cpu) / args.steps, out)

        print(f"machine: {machine_summary()}")
        a_name = f"{args.base}{' without reuse' if args.no_reuse_a else ''}"
        b_name = f"working tree{' + torch.compile(DiT blocks)' if args.compile_b else ''}"
        print(
            f"{args.variant}, {args.seconds:g} s ({latents} latents), batch {b}, {args.steps} forwards per round, "
            f"{torch.get_num_threads()} threads; A = {a_name}, B = {b_name}"
        )
        started = time.perf_counter()
        loop(old, not args.no_reuse_a), loop(new)  # warm-up (and compilation)
        print(f"warm-up: {time.perf_counter() - started:.1f} s")
        walls, cpus = [], []
        for r in range(args.rounds):
            wa, ca, out_a = loop(old, not args.no_reuse_a)
            wb, cb, out_b = loop(new)
            walls.append((wa, wb))
            cpus.append((ca, cb))
            same = "identical" if torch.equal(out_a, out_b) else f"rel diff {relative_l2(out_b, out_a):.1e}"
            print(
                f"  round {r + 1}: wall A {wa:.3f} B {wb:.3f} s/forward (B/A {wb / wa:.3f}); "
                f"CPU A {ca:.3f} B {cb:.3f} s/forward (B/A {cb / ca:.3f}); load {load_average():.1f}; "
                f"outputs {same}",
                flush=True,
            )
        for name, pairs in (("wall", walls), ("CPU", cpus)):
            med_ratio = statistics.median(p[1] / p[0] for p in pairs)
            print(
                f"median {name}: A {statistics.median(p[0] for p in pairs):.3f}, "
                f"B {statistics.median(p[1] for p in pairs):.3f} s/forward, median B/A {med_ratio:.3f} "
                f"({(1 - med_ratio) * 100:+.1f}% time saved)"
            )
    return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
