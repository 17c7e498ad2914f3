"""The official ``generate`` arguments that only restate a request another way, translated to the plain one.

The official API takes a request as prompt + duration, as ``conditioning`` dicts, or as precomputed
``conditioning_tensors`` (what its ``model.conditioner(...)`` returns), and accepts a ``sigma_max`` its
rectified-flow samplers ignore. ``StableAudioModel.generate`` reduces them to prompt, negative prompt, duration
and batch size with :func:`plain_request` before any work, and takes the tensors' conditioning through
:func:`conditioning_from_tensors` instead of encoding the prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .conditioners import Conditioning


class PlainRequest(NamedTuple):
    prompt: str | Sequence[str] | None
    negative_prompt: str | Sequence[str] | None
    duration: float | Sequence[float]
    batch_size: int


def plain_request(
    prompt: str | Sequence[str] | None,
    negative_prompt: str | Sequence[str] | None,
    duration: float | Sequence[float],
    batch_size: int,
    *,
    conditioning: Sequence[Mapping[str, Any]] | None = None,
    negative_conditioning: Sequence[Mapping[str, Any]] | None = None,
    conditioning_tensors: Mapping[str, Any] | None = None,
    sigma_max: float | None = None,
) -> PlainRequest:
    """The request the official arguments describe: ``conditioning`` dicts replace prompt, duration and batch
    size, ``negative_conditioning`` the negative prompt; with ``conditioning_tensors`` no prompt is needed.
    ``sigma_max`` may only be None or 1 (rectified flow ignores it officially; ``init_noise_level`` is the
    setting that acts)."""
    if sigma_max is not None and sigma_max != 1.0:
        raise ValueError("sigma_max is not used by SA3's rectified-flow samplers; use init_noise_level with init_audio")
    if conditioning is not None:
        prompt, duration = _from_conditioning_dicts(conditioning, "conditioning")
        batch_size = len(prompt)
    if negative_conditioning is not None:
        negative_prompt, _ = _from_conditioning_dicts(negative_conditioning, "negative_conditioning")
    if prompt is None and conditioning_tensors is not None:
        prompt = ""  # unused: the tensors replace the text encoding
    return PlainRequest(prompt, negative_prompt, duration, batch_size)


def conditioning_from_tensors(tensors: Mapping[str, Any], batch_size: int) -> Conditioning:
    """An official ``conditioning_tensors`` dict (``{"prompt": (emb (B, 256, 768), mask (B, 256)),
    "seconds_total": (emb (B, 1, 768), mask (B, 1))}``, as its ``model.conditioner(...)`` returns) as a
    :class:`Conditioning`."""
    try:
        prompt, prompt_mask = tensors["prompt"]
        seconds, seconds_mask = tensors["seconds_total"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            'conditioning tensors must map "prompt" and "seconds_total" to (embeddings, mask) pairs'
        ) from None
    if seconds.ndim == 2:
        seconds, seconds_mask = seconds[:, None], seconds_mask[:, None]
    if prompt.ndim != 3 or prompt.shape[0] != batch_size or seconds.shape[0] != batch_size:
        raise ValueError(
            f"conditioning tensors of shapes {tuple(prompt.shape)} / {tuple(seconds.shape)} do not fit "
            f"a batch of {batch_size}"
        )
    seconds = seconds.to(device=prompt.device, dtype=prompt.dtype)
    return Conditioning(
        cross_attn_cond=torch.cat([prompt, seconds], dim=1),
        prompt_mask=prompt_mask.bool(),
        global_cond=seconds.squeeze(1),
    )


def _from_conditioning_dicts(dicts: Sequence[Mapping[str, Any]], name: str) -> tuple[list[str], list[float]]:
    """Official conditioning dicts -> (prompts, durations)."""
    if isinstance(dicts, Mapping) or not dicts:
        raise ValueError(f"{name} must be a non-empty list of {{'prompt': ..., 'seconds_total': ...}} dicts")
    prompts, durations = [], []
    for i, entry in enumerate(dicts):
        unknown = set(entry) - {"prompt", "seconds_total"}
        if unknown or "prompt" not in entry:
            raise ValueError(f"{name}[{i}]: expected keys 'prompt' and 'seconds_total', got {sorted(entry)}")
        prompts.append(entry["prompt"])
        durations.append(entry.get("seconds_total", 120))
    return prompts, durations
