"""Which dtype on this machine: GEMM rates and one real-width DiT block per dtype, interleaved.

    python -m bench.dtypes [--rounds 5] [--tokens 452]

CPU: a dtype pays only if the CPU has native instructions for it (AVX512-BF16 / AMX for bf16, AVX512-FP16
for fp16); otherwise PyTorch converts element by element and the matmul rate collapses. The script measures
rather than guesses. CUDA (if present) is measured too; fp16/bf16 there are what the official runtime and
its ports use (official: fp16 DiT + SAME on CUDA; fp32 on CPU and MPS). The dtypes are timed in turns
(fp32, bf16, fp16, fp32, ...) so that load from other processes hits all of them alike; medians are shown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from sa3_core.checkpoint import DIT_PREFIX, build_modules, preset_config
from sa3_core.layers import RotaryEmbedding, rotary_tables
from sa3_core.ops import store_weights

from .measure import load_average, machine_summary, matmul_rate
from .random_model import randomise_

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Float8 weight storage (sa3_core.ops): the block's matrices in float8, cast to fp32 at every use.
STORED = {"fp8_e4m3fn (fp32 compute)": torch.float8_e4m3fn, "fp8_e5m2 (fp32 compute)": torch.float8_e5m2}


def dit_block(dtype: torch.dtype, device: str, tokens: int, weight_dtype: torch.dtype | None = None):
    """A callable running one small-music DiT block (width 1024) on ``tokens`` tokens, its matrices stored
    in ``weight_dtype`` when given."""
    config = preset_config("small")
    dit = build_modules(config, device="meta")[DIT_PREFIX]
    block = randomise_(dit.transformer.layers[0], torch.Generator().manual_seed(0), device).to(dtype)
    if weight_dtype is not None:
        store_weights(block, weight_dtype)
    e = config.dit.embed_dim
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, e, generator=g).to(device, dtype)
    context = torch.randn(1, 257, e, generator=g).to(device, dtype)
    local = torch.randn(1, tokens, 257, generator=g).to(device, dtype)
    modulation = (torch.randn(1, 6 * e, generator=g) * 0.1).to(device, dtype)
    freqs = rotary_tables(RotaryEmbedding(32)(tokens).to(device))
    with torch.inference_mode():
        constants = block.constants(context, local, tokens)

    def run() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            block(
                x,
                constants=constants,
                modulation=modulation,
                rotary_freqs=freqs,
                padding_mask=None,
                zero_padded_ff=False,
            )
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    run()  # warm-up
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=452, help="452 = small-music at 30 s (388 latents + 64)")
    args = parser.parse_args(argv)
    print(f"machine: {machine_summary()}; load {load_average():.1f}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    e = 1024
    shapes = [(args.tokens, e, 3 * e), (args.tokens, e, 8 * e), (args.tokens, 4 * e, e)]
    print(f"\n| device | dtype | GEMM GFLOP/s (small DiT linears, {args.tokens} tokens) | one DiT block | vs fp32 |")
    print("|---|---|---|---|---|")
    for device in devices:
        blocks = {name: dit_block(dtype, device, args.tokens) for name, dtype in DTYPES.items()}
        blocks.update({name: dit_block(torch.float32, device, args.tokens, stored) for name, stored in STORED.items()})
        rates = {name: [] for name in DTYPES}
        times = {name: [] for name in blocks}
        cpu_times = {name: [] for name in blocks}
        for _ in range(args.rounds):
            for name, dtype in DTYPES.items():
                rates[name].append(matmul_rate(shapes, dtype=dtype, repeats=3, device=device))
            for name, run in blocks.items():
                cpu = time.process_time()
                times[name].append(run())
                cpu_times[name].append(time.process_time() - cpu)
        reference = statistics.median(times["fp32"])
        cpu_reference = statistics.median(cpu_times["fp32"])
        for name in blocks:
            block, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
            rate = f"{statistics.median(rates[name]) / 1e9:.1f}" if name in rates else "-"
            print(
                f"| {device} | {name} | {rate} | {block * 1000:.0f} ms (CPU {cpu * 1000:.0f} ms) | "
                f"{block / reference:.2f}x (CPU {cpu / cpu_reference:.2f}x) |",
                flush=True,
            )
    print(f"(medians of {args.rounds} interleaved rounds; load now {load_average():.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
