"""Measuring tools: stage timer with peak resident memory, the machine's matmul rate, machine load, the
relative L2 error.

Peak RSS per stage: Linux keeps the high-water mark of resident memory in ``/proc/self/status``
(``VmHWM``); writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS, so resetting before a
stage and reading after gives that stage's peak exactly. Where that file is not writable, a thread samples
``VmRSS`` every 5 ms instead (it can miss short spikes; the result says which method was used).
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GiB = 1024**3


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """||x - reference|| / ||reference||, in float64 on the CPU."""
    x, reference = x.double().cpu(), reference.double().cpu()
    return ((x - reference).norm() / reference.norm()).item()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@dataclass
class StageResult:
    wall_s: float
    cpu_s: float  # CPU time of the whole process (all threads)
    rss_before: int
    peak_rss: int
    method: str  # "VmHWM" (exact) or "sampled"


class StageMeter:
    """``with StageMeter() as meter: ...`` then ``meter.result``: wall, CPU time and peak RSS of the block."""

    def __enter__(self) -> StageMeter:
        self._exact = _reset_peak()
        self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = None
        if not self._exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self._rss_before = rss_bytes()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        cpu = time.process_time() - self._cpu0
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        peak = _status_kib("VmHWM") * 1024 if self._exact else max(self._peak, rss_bytes())
        self.result = StageResult(wall, cpu, self._rss_before, peak, "VmHWM" if self._exact else "sampled")


def matmul_rates(
    shapes: list[tuple[int, int, int]],
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """GEMM rate in FLOP/s on all of torch's threads, per wall second and per CPU second of the process.

    For each ``(m, k, n)``, ``F.linear`` of (m, k) activations with an (n, k) weight (the layout of every
    Linear in the model; on CPU the other layout is up to 2x slower in fp32 and 50x in bf16) is timed
    ``repeats`` times after a warm-up and its median kept; a rate is total FLOPs / total time. The CPU-time
    rate hardly moves when other processes load the machine (time we are descheduled is not counted).
    """
    generator = torch.Generator().manual_seed(0)
    flops = seconds = cpu_seconds = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=generator).to(device=device, dtype=dtype)
        w = torch.randn(n, k, generator=generator).to(device=device, dtype=dtype)
        F.linear(a, w)  # warm-up
        times, cpu_times = [], []
        for _ in range(repeats):
            _sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            F.linear(a, w)
            _sync(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu)
        flops += 2.0 * m * k * n
        seconds += statistics.median(times)
        cpu_seconds += statistics.median(cpu_times)
    return flops / seconds, flops / max(cpu_seconds, 1e-9)


def matmul_rate(
    shapes: list[tuple[int, int, int]],
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> float:
    """The wall-clock GEMM rate of :func:`matmul_rates`."""
    return matmul_rates(shapes, dtype, repeats, device)[0]


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def load_average() -> float:
    """1-minute load average (other processes compete for the same cores)."""
    return os.getloadavg()[0]


def machine_summary() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = re.search(r"model name\s*:\s*(.*)", handle.read()).group(1).strip()
    except (OSError, AttributeError):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}), {mem:.1f} GiB RAM"
    )
