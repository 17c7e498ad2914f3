"""Request checks: every fact about a generation request is checked here, by one function with one message.

The Python API (``StableAudioModel.generate`` and its stage methods), the CLI and the ComfyUI nodes all call
these, so a wrong value reads the same wherever it enters. Each check raises ``ValueError`` (or the error
class its caller passes) before any work is done.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

Region = tuple[float, float]
"""``(start_seconds, end_seconds)`` of a span to regenerate."""

MAX_BATCH = 64
"""The most items one generation takes, however the batch is formed (``batch_size``, prompt or duration
lists, ``conditioning`` dicts, ``---``-separated prompts in the nodes). Every item costs memory in every
stage, so an unbounded batch is an unbounded allocation."""

MAX_PROMPT_CHARS = 1 << 18
"""The longest prompt text accepted (256 Ki characters). The encoder reads 256 tokens, a few thousand
characters at most; the cap only bounds the tokenizer's work on text far past that (longer prompts are
read up to their 256th token, with a warning)."""

MAX_SEED = 2**63 - 1

SAMPLE_RATE_RANGE = (1_000, 384_000)
"""Sample rates (Hz) accepted for input audio: telephone-grade to the highest studio rate. Outside this a
header is broken or the file is not audio, and resampling it would only waste time."""


# ---------------------------------------------------------------------------------------------------
# Finiteness: NaN and infinities only ever turn into noise or full-scale clipping
# ---------------------------------------------------------------------------------------------------


def finite_number(value: object, name: str, error: type[ValueError] = ValueError) -> float:
    """``value`` as a float when it is a finite real number; ``error(...)`` naming ``name`` otherwise.

    NaN passes every ``<``/``>`` range check (ComfyUI's widget min/max included) and ``x or default`` keeps
    it, so every float that enters a generation comes through here first."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return float(value)


def require_finite(tensor: torch.Tensor, message: str, error: type[ValueError] = ValueError) -> None:
    """Raise ``error(message)`` when ``tensor`` holds NaN or an infinity. The message says where the tensor
    came from and what that means (a damaged file, broken weights, extreme settings): that is what differs
    between callers. Float8 tensors are checked as float16 (``isfinite`` has no float8 kernels; float16
    holds every float8 value); integer and bool tensors are always finite."""
    if not tensor.is_floating_point():
        return
    if tensor.element_size() == 1:
        tensor = tensor.to(torch.float16)
    if not bool(torch.isfinite(tensor).all()):
        raise error(message)


# ---------------------------------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------------------------------


def json_object(text: str, source: str, error: type[ValueError] = ValueError) -> dict:
    """``text`` parsed as a JSON object (a config, a file's metadata); ``error`` naming ``source`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{source} must be a JSON object, got {type(value).__name__}")
    return value


def json_file_object(path: Path, error: type[ValueError] = ValueError) -> dict:
    """The UTF-8 JSON object in the file ``path`` (see :func:`json_object`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc})") from None
    return json_object(text, str(path), error)


def validate_batch_size(size: object, name: str = "batch_size") -> int:
    """A batch of ``size`` items: an integer in [1, :data:`MAX_BATCH`]."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {size!r}")
    if size > MAX_BATCH:
        raise ValueError(f"{name}: {size} items, more than the {MAX_BATCH} one generation takes")
    return size


def per_item(value: T | Sequence[T], batch_size: int, name: str) -> list[T]:
    """A scalar broadcast to ``batch_size`` items, or a list/tuple that must have exactly that length."""
    if isinstance(value, (list, tuple)):
        if len(value) != batch_size:
            raise ValueError(f"{name} has {len(value)} values but batch_size is {batch_size}")
        return list(value)
    return [value] * batch_size  # type: ignore[list-item]


def validate_seed(seed: object) -> int:
    """A seed: an integer in [0, :data:`MAX_SEED`] (the Python API's ``-1``, a random seed, is resolved
    before this check)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"seed must be an integer in [0, {MAX_SEED}] (or -1 for a random seed in the Python API), got {seed!r}"
        )
    return seed


def validate_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def validate_init_noise_level(level: float) -> None:
    """``init_noise_level`` (sigma_max for audio-to-audio) must lie in (0, 1]."""
    if not (isinstance(level, (int, float)) and math.isfinite(level) and 0 < level <= 1):
        raise ValueError(f"init_noise_level must be in (0, 1], got {level!r}")


def validate_durations(durations: Sequence[float], max_seconds: float) -> None:
    """Every duration must be a finite number of seconds in (0, max_seconds]."""
    for i, d in enumerate(durations):
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
            raise ValueError(f"duration[{i}] must be a finite number of seconds, got {d!r}")
        if d <= 0:
            raise ValueError(f"duration[{i}] must be positive, got {d} s")
        if d > max_seconds:
            raise ValueError(f"duration[{i}] = {d} s is above this model's maximum of {max_seconds:.2f} s")


def validate_prompts(values: Sequence[object], name: str) -> None:
    """Every prompt must be text the tokenizer can read: a string of valid Unicode (no lone UTF-16
    surrogate, which JSON's ``\\ud800`` escapes can produce and the tokenizer refuses with a raw TypeError)
    of at most :data:`MAX_PROMPT_CHARS` characters."""
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(value).__name__}")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"{name}[{i}] has {len(value)} characters, more than the {MAX_PROMPT_CHARS} allowed "
                "(the text encoder reads only the first 256 tokens anyway)"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name}[{i}] is not valid text: character {exc.start} is a lone UTF-16 surrogate "
                f"(U+{ord(value[exc.start]):04X}); remove it or replace it with the intended character"
            ) from None


def is_region(value: object) -> bool:
    """Whether ``value`` has the form of one :data:`Region`: a pair of real numbers."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def validate_regions(regions: Sequence[Region], duration: float | None, name: str = "inpaint region") -> None:
    """Each ``(start, end)`` needs ``0 <= start < end`` and, when ``duration`` is known, ``start < duration``.

    An end past the duration is allowed (it is clipped; audio past the duration is generated anyway).
    ``duration=None`` checks the regions alone (the nodes' queue-time check, before a duration is known).
    """
    for i, region in enumerate(regions):
        if not is_region(region):
            raise ValueError(f"{name} {i}: expected (start_seconds, end_seconds), got {region!r}")
        start, end = region
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{name} {i}: bounds must be finite, got {region!r}")
        if start < 0:
            raise ValueError(f"{name} {i}: start {start} s is negative")
        if end <= start:
            raise ValueError(f"{name} {i}: end {end} s must be after start {start} s")
        if duration is not None and start >= duration:
            raise ValueError(f"{name} {i}: starts at {start} s, at or after the end of the {duration} s output")


def validate_sample_rate(rate: object, name: str = "audio") -> int:
    """An input sample rate: an integer number of Hz within :data:`SAMPLE_RATE_RANGE`."""
    low, high = SAMPLE_RATE_RANGE
    if isinstance(rate, bool) or not isinstance(rate, numbers.Integral) or rate <= 0:
        raise ValueError(f"{name}: sample rate must be a positive integer, got {rate!r}")
    if not low <= rate <= high:
        raise ValueError(f"{name}: sample rate {rate} Hz is outside {low}..{high} Hz; is the file's header right?")
    return int(rate)


def validate_audio(audio: torch.Tensor, name: str = "audio") -> None:
    """Input audio must hold samples and only finite values."""
    if audio.numel() == 0 or audio.shape[-1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(audio.shape)})")
    require_finite(audio, f"{name} contains NaN or infinite samples")
