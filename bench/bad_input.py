"""Cost of hostile input, before and after issue 13: region-text parsing and resampling awkward sample rates.

    python -m bench.bad_input                       # this tree against commit df04e21 (before the fix)
    python -m bench.bad_input --base <commit> --parse-sizes 4000 8000 16000 --rates 4001 44101 48000

Parsing: seconds to reject a run of N digits as the Inpaint node's ``regions`` text (the worst case of the old
pattern, which ComfyUI runs inside its request handler). The old parser is loaded from ``--base``; the new one
is timed as shipped (the length cap refuses at once) and with the cap lifted, to show the parse itself is
linear. Resampling: wall time and peak resident memory to bring a 1 s stereo clip to 44.1 kHz with
``torchaudio.functional.resample`` (what the pack called before) and with ``sa3_core.resample.resample``.
Each resampling runs in its own process under an address-space limit (``--limit-gib``), so a request for
more memory fails there instead of swamping the machine; the failure is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARSING = "nodes/parsing.py"


def _module_from(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time_reject(parse, text: str) -> float:
    start = time.perf_counter()
    try:
        parse(text)
    except ValueError:
        pass
    return time.perf_counter() - start


def parsing_rows(base: str, sizes: list[int]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        old_file = Path(tmp) / "parsing_old.py"
        old_file.write_text(
            subprocess.run(
                ["git", "show", f"{base}:{PARSING}"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
        )
        old = _module_from(old_file, "parsing_old")
    new = _module_from(REPO / PARSING, "parsing_new")
    rows = ["| digits | before (s) | after, as shipped (s) | after, cap lifted (s) |", "|---:|---:|---:|---:|"]
    for size in sizes:
        text = "1" * size
        shipped = _time_reject(new.parse_regions, text)
        cap = new.MAX_LIST_CHARS
        new.MAX_LIST_CHARS = 10**9
        try:
            lifted = _time_reject(new.parse_regions, text)
        finally:
            new.MAX_LIST_CHARS = cap
        rows.append(f"| {size} | {_time_reject(old.parse_regions, text):.3f} | {shipped:.6f} | {lifted:.4f} |")
    return rows


def _resample_once(method: str, rate: int) -> dict:
    """Runs in a child process: one resampling of 1 s of stereo noise, its wall time and peak RSS."""
    import torch

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    if method == "torchaudio":
        from torchaudio.functional import resample
    else:
        from sa3_core.resample import resample
    clip = torch.randn(2, rate, generator=torch.Generator().manual_seed(0)) * 0.1
    resample(clip, 48000, 44100)  # import and first-call costs outside the measurement
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = status("VmRSS")
    start = time.perf_counter()
    out = resample(clip, rate, 44100)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_gib": (status("VmHWM") - before) / 2**30, "samples": out.shape[-1]}


def resampling_rows(rates: list[int], limit_gib: float) -> list[str]:
    rows = ["| rate (Hz) | method | wall (s) | peak RSS increase (GiB) |", "|---:|---|---:|---:|"]
    for rate in rates:
        for method in ("torchaudio", "sa3_core"):
            limit = int(limit_gib * 2**30)
            done = subprocess.run(
                [sys.executable, "-m", "bench.bad_input", "--child", method, str(rate)],
                cwd=REPO,
                capture_output=True,
                text=True,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),  # noqa: B023 - run here
            )
            if done.returncode == 0:
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(f"| {rate} | {method} | {figures['wall_s']:.3f} | {figures['peak_gib']:.3f} |")
            else:
                why = (done.stderr.strip().splitlines() or ["killed"])[-1]
                why = why[why.find("you tried to allocate") :] if "you tried to allocate" in why else why[-110:]
                rows.append(f"| {rate} | {method} | failed under a {limit_gib:g} GiB limit: {why} | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="df04e21", help="the commit whose parser is 'before'")
    parser.add_argument("--parse-sizes", type=int, nargs="*", default=[2000, 4000, 8000, 16000])
    parser.add_argument("--rates", type=int, nargs="*", default=[4001, 44101, 22050, 48000])
    parser.add_argument("--limit-gib", type=float, default=8.0, help="address-space limit per resampling")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "RATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_resample_once(args.child[0], int(args.child[1]))))
        return
    print("Rejecting N digits as Inpaint regions text\n")
    print("\n".join(parsing_rows(args.base, args.parse_sizes)))
    print("\nResampling 1 s of stereo audio to 44.1 kHz\n")
    print("\n".join(resampling_rows(args.rates, args.limit_gib)))


if __name__ == "__main__":
    main()
