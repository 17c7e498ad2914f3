"""Which dtype each part of an SA3 model runs in, per device.

The policy, and why:

- CPU: bfloat16 for the DiT, the conditioners and the text encoder where this CPU multiplies bf16 much
  faster than float32, else float32. A CPU with native bf16 arithmetic (AMX-BF16 or AVX512-BF16) may or may
  not be faster in bf16: measured, an AMX Xeon ran bf16 GEMMs at 1,400 GFLOP/s against 380 in fp32, while an
  AVX512-BF16 Xeon without AMX ran them at 121 against 204, and CPUs without native bf16 are 4-5x slower
  in it (bench/README.md). So the choice is made by capability *and* a short measured probe
  (:func:`cpu_compute_dtype`, a few GEMMs at a DiT-like shape timed in CPU time, once per process): bf16 only
  when it is at least :data:`BF16_SPEEDUP` times as fast as fp32. The SAME autoencoder follows the same
  choice where its error stays small (:data:`SAME_FOLLOWS_BF16_ON_CPU`, from ``python -m
  bench.precision_error``).
- CUDA: float16 by default for the DiT, SAME and the conditioners, as the official runtime
  (``StableAudioModel.from_pretrained(model_half=True)`` casts the whole model to fp16 on CUDA).
  bfloat16 is allowed on request.
- MPS: float32 by default, as the official code (it turns ``model_half`` off without CUDA). The SAME
  autoencoder is never run in bfloat16 on MPS, whatever is requested: in bf16 on Apple GPUs the SA3 VAE
  produces broadband noise (ComfyUI PR #15207; fp16 and fp32 are fine), so it falls back to float32 there
  while the DiT keeps the requested dtype.

Every choice can be overridden (``dtype`` / ``autoencoder_dtype`` here, in ``from_pretrained``, the CLI
and the ComfyUI loader) and is logged (logger ``sa3_core.precision``): the probe once per process, each
model's dtypes once per load. Float8 *weight storage* (``weight_dtype``) is a memory choice, never made
automatically; see :mod:`sa3_core.ops`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BF16_SPEEDUP = 1.5
"""bf16 is chosen on a CPU only when its measured GEMM rate is at least this multiple of fp32's: the rest
of the model (attention softmax, norms, elementwise work, casts) gains less than the GEMMs, and a small
gain is not worth bf16's rounding."""

SAME_FOLLOWS_BF16_ON_CPU = True
"""Whether SAME decodes in bf16 when the CPU probe picks bf16 for the DiT. Its bf16 error against fp32 is
measured per stage by ``python -m bench.precision_error`` (bench/README.md, "Precision")."""

CPU_DTYPE_ENV = "SA3_CPU_DTYPE"
"""Environment variable that fixes the CPU choice instead of measuring: ``float32`` or ``bfloat16`` (unset or
``auto``: measure). For reproducible runs across machines (the test suite sets ``float32``: the golden
fixtures are the official fp32 results)."""

PROBE_SHAPE = (256, 1024, 1024)
"""(tokens, in, out) of the probe's GEMM: a DiT-width linear layer (0.5 GFLOP, ~4 ms in fp32 on one core)."""


@dataclass(frozen=True)
class ComponentDtypes:
    """The dtype of the DiT (which the conditioners and, unless a caller says otherwise, the text encoder
    share) and of the SAME autoencoder."""

    dit: torch.dtype
    autoencoder: torch.dtype


# --------------------------------------------------------------------------------------------------
# The CPU probe
# --------------------------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (AMX-BF16 / AVX512-BF16 on x86, BF16 on Arm).
    Without them PyTorch converts element by element and bf16 is always slower, so nothing is measured."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    if any(getattr(torch.cpu, name, lambda: False)() for name in probes):
        return True
    try:
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16", "bf16"})  # "bf16": the aarch64 Features entry


def gemm_rate(dtype: torch.dtype, shape: tuple[int, int, int] = PROBE_SHAPE) -> float:
    """FLOP/s per CPU second of one ``F.linear`` of this shape in ``dtype`` on the calling thread.

    Timed in the thread's own CPU time, with torch on one thread for the call (restored after), so the
    figure is the kernel's own speed: other processes' load, which deschedules us, does not enter it
    (wall-clock rates on a busy machine even flip the order of bf16 and fp32, measured in bench/README.md).
    """
    tokens, fan_in, fan_out = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, fan_in, generator=generator).to(dtype)
    w = torch.randn(fan_out, fan_in, generator=generator).to(dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        F.linear(x, w)  # warm-up (kernel selection, first-touch)
        start = time.thread_time()
        F.linear(x, w)
        seconds = time.thread_time() - start
    finally:
        torch.set_num_threads(threads)
    return 2.0 * tokens * fan_in * fan_out / max(seconds, 1e-9)


def bf16_pays(fp32_rate: float, bf16_rate: float) -> bool:
    """The decision rule: bf16 when it multiplies at least :data:`BF16_SPEEDUP` times as fast as fp32."""
    return bf16_rate >= BF16_SPEEDUP * fp32_rate


def choose_cpu_dtype(
    native_bf16: bool, rate: Callable[[torch.dtype], float], rounds: int = 3
) -> tuple[torch.dtype, str]:
    """bf16 or fp32 for this CPU, and why. ``rate(dtype)`` measures a GEMM rate; it is called in turns
    (fp32, bf16, fp32, ...) and the best of ``rounds`` is kept for each, so that other processes'
    load, which only ever slows a measurement down, hits both alike."""
    if not native_bf16:
        return torch.float32, "no native bf16 instructions (AMX-BF16 / AVX512-BF16)"
    rates: dict[torch.dtype, float] = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for _ in range(rounds):
        for dtype in rates:
            rates[dtype] = max(rates[dtype], rate(dtype))
    fp32, bf16 = rates[torch.float32] / 1e9, rates[torch.bfloat16] / 1e9
    measured = f"GEMM bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s ({bf16 / fp32:.2f}x, bf16 needs {BF16_SPEEDUP}x)"
    return (torch.bfloat16 if bf16_pays(fp32, bf16) else torch.float32), measured


_FIXED_CPU_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@functools.cache
def cpu_compute_dtype() -> torch.dtype:
    """The CPU's fastest dtype for the DiT and the text encoder: measured once per process (unless
    :data:`CPU_DTYPE_ENV` fixes it) and logged."""
    fixed = os.environ.get(CPU_DTYPE_ENV, "auto").strip().lower()
    if fixed in _FIXED_CPU_DTYPES:
        dtype, why = _FIXED_CPU_DTYPES[fixed], f"${CPU_DTYPE_ENV}={fixed}"
    elif fixed == "auto":
        dtype, why = choose_cpu_dtype(cpu_has_native_bf16(), gemm_rate)
    else:
        raise ValueError(f"${CPU_DTYPE_ENV}={fixed!r}: expected auto, float32 or bfloat16")
    log.info("sa3: CPU compute dtype %s (%s)", str(dtype).removeprefix("torch."), why)
    return dtype


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------


def default_dtype(device: torch.device | str) -> torch.dtype:
    """float16 on CUDA (the official ``model_half``), the probe's choice on CPU, float32 on MPS (as the
    official code)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu":
        return cpu_compute_dtype()
    return torch.float32


def autoencoder_dtype(device: torch.device | str, dtype: torch.dtype, *, chosen: bool = False) -> torch.dtype:
    """The SAME autoencoder's dtype for a model whose DiT runs in ``dtype`` on ``device`` (``chosen``: the
    DiT's dtype was picked by the policy, not asked for): the same, except that bfloat16 on MPS becomes
    float32 (bf16 SAME on MPS decodes to noise) and a CPU bf16 choice is followed only where
    :data:`SAME_FOLLOWS_BF16_ON_CPU`."""
    kind = torch.device(device).type
    if dtype == torch.bfloat16 and (kind == "mps" or (kind == "cpu" and chosen and not SAME_FOLLOWS_BF16_ON_CPU)):
        return torch.float32
    return dtype


def component_dtypes(
    device: torch.device | str, dtype: torch.dtype | None = None, autoencoder: torch.dtype | None = None
) -> ComponentDtypes:
    """Every module's dtype for ``device`` when the user asks for ``dtype`` (None: :func:`default_dtype`)
    and for ``autoencoder`` (None: :func:`autoencoder_dtype` of the DiT's), logged."""
    chosen = dtype is None
    dtype = dtype or default_dtype(device)
    if autoencoder is None:
        autoencoder = autoencoder_dtype(device, dtype, chosen=chosen)
    elif torch.device(device).type == "mps" and autoencoder == torch.bfloat16:
        autoencoder = torch.float32  # never bf16 SAME on MPS, even when asked for
    result = ComponentDtypes(dit=dtype, autoencoder=autoencoder)
    log.info(
        "sa3: %s DiT / text encoder %s, SAME %s (%s)",
        torch.device(device).type,
        str(result.dit).removeprefix("torch."),
        str(result.autoencoder).removeprefix("torch."),
        "policy" if chosen else "requested",
    )
    return result
