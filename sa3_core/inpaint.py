"""Inpaint and continuation masks: regions in seconds -> a mask in samples -> the DiT's mask in latents.

All pure functions. Formulas follow the official ``StableAudioModel.generate`` (``model.py``) at 636f906.
Inpaint masks use the official convention: **1 = keep the given audio, 0 = generate**.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .validation import Region, is_region, require_finite, validate_regions


def regions_to_sample_mask(
    regions: Sequence[Region], num_samples: int, sample_rate: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(num_samples,) float32 ones, with ``[int(start * sr) : int(end * sr)]`` set to 0 for every region.

    Both bounds are clipped to ``num_samples`` (official). Overlapping regions simply overlap.
    """
    mask = torch.ones(num_samples, dtype=torch.float32, device=device)
    for start, end in regions:
        mask[min(int(start * sample_rate), num_samples) : min(int(end * sample_rate), num_samples)] = 0
    return mask


def continuation_region(source_seconds: float, duration: float) -> Region:
    """The region to generate when continuing ``source_seconds`` of audio up to ``duration``."""
    if not source_seconds < duration:
        raise ValueError(
            f"continuation: the source audio ({source_seconds:.3f} s) must be shorter than the requested duration "
            f"({duration:.3f} s)"
        )
    return (float(source_seconds), float(duration))


def regions_from_seconds(
    starts: float | Sequence[float] | None, ends: float | Sequence[float] | None
) -> list[Region] | None:
    """The official ``inpaint_mask_start/end_seconds`` pair (scalars or equal-length lists) as regions."""
    if starts is None and ends is None:
        return None
    if starts is None or ends is None:
        raise ValueError("give both inpaint_mask_start_seconds and inpaint_mask_end_seconds")
    start_list, end_list = isinstance(starts, (list, tuple)), isinstance(ends, (list, tuple))
    if start_list != end_list:
        raise ValueError("inpaint_mask_start_seconds and inpaint_mask_end_seconds must both be numbers or both lists")
    starts_ = list(starts) if start_list else [starts]  # type: ignore[arg-type]
    ends_ = list(ends) if end_list else [ends]  # type: ignore[arg-type]
    if len(starts_) != len(ends_):
        raise ValueError(f"{len(starts_)} inpaint starts but {len(ends_)} ends")
    if not starts_:
        raise ValueError("no inpaint regions given")
    return [(s, e) for s, e in zip(starts_, ends_)]


def regions_per_item(
    regions: Sequence[Region] | Sequence[Sequence[Region]], durations: Sequence[float]
) -> list[list[Region]]:
    """One list of regions per item, each checked against that item's duration (``validate_regions``).

    ``regions``: one list of ``(start, end)`` shared by every item, or one list per item."""
    shared = all(is_region(r) for r in regions)
    if not shared and len(regions) != len(durations):
        raise ValueError(f"per-item regions: got {len(regions)} lists for a batch of {len(durations)}")
    items = [list(regions)] * len(durations) if shared else [list(r) for r in regions]  # type: ignore[arg-type]
    for b, (item, seconds) in enumerate(zip(items, durations)):
        validate_regions(item, seconds, name=f"item {b}: inpaint region")
    return items


def inpaint_mask_samples(
    batch_size: int,
    num_samples: int,
    sample_rate: int,
    seconds_total: Sequence[float],
    *,
    regions: Sequence[Region] | Sequence[Sequence[Region]] | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The inpaint mask in samples, (B, N) float32, before it is reduced to latents.

    Give either ``regions`` (seconds; one list of ``(start, end)`` shared by every item, or a list of
    ``batch_size`` such lists, one per item) or a prebuilt ``mask`` in samples ((N',), (1, N') or (B, N');
    1 = keep, 0 = generate). A prebuilt mask longer than the window (``num_samples``) is cut to it (official);
    a shorter one is padded with 0 (generate). The official code stretches a shorter mask over the window,
    which moves its regions in time; it documents full-length masks only, and those behave the same here.

    Regions are checked against each item's duration (:func:`regions_per_item`).
    Then, as in training, each item's mask is zeroed from ``int(seconds_total[b] * sr)`` on: audio past the
    requested duration is always generated. (The official code uses the batch's longest duration for
    every item; with equal durations, the only batched case it can run, the two agree.)
    """
    if (regions is None) == (mask is None):
        raise ValueError("give exactly one of regions or mask")
    if len(seconds_total) != batch_size:
        raise ValueError(f"seconds_total has {len(seconds_total)} values for a batch of {batch_size}")

    if regions is not None:
        rows = torch.stack(
            [
                regions_to_sample_mask(item, num_samples, sample_rate, device)
                for item in regions_per_item(regions, seconds_total)
            ]
        )
    else:
        assert mask is not None
        rows = mask.to(device=device, dtype=torch.float32)
        require_finite(rows, "inpaint mask contains NaN or infinite values (expected 1 = keep, 0 = generate)")
        if rows.ndim == 1:
            rows = rows[None]
        if rows.ndim != 2 or rows.shape[0] not in (1, batch_size):
            raise ValueError(
                f"inpaint mask of shape {tuple(mask.shape)} does not fit a batch of {batch_size} "
                "(expected (N,), (1, N) or (B, N))"
            )
        rows = F.pad(rows[:, :num_samples], (0, max(0, num_samples - rows.shape[-1])), value=0.0)
        rows = rows.expand(batch_size, -1)

    rows = rows.clone()
    for b, seconds in enumerate(seconds_total):
        if seconds > 0:
            rows[b, int(seconds * sample_rate) :] = 0
    return rows


def mask_to_latents(mask: torch.Tensor, latent_len: int) -> torch.Tensor:
    """(B, N) sample mask -> (B, L) latent mask by nearest interpolation.

    For ``N = L * ds`` latent ``i`` takes the value of sample ``i * ds``, the first sample of its frame: a
    latent is regenerated exactly when the first sample of its frame lies in a region.
    """
    return F.interpolate(mask[:, None].float(), size=latent_len, mode="nearest")[:, 0]


def inpaint_mask(
    batch_size: int,
    audio_sample_size: int,
    latent_len: int,
    sample_rate: int,
    seconds_total: Sequence[float],
    *,
    regions: Sequence[Region] | Sequence[Sequence[Region]] | None = None,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The DiT's inpaint mask channel, (B, 1, L) float32: :func:`inpaint_mask_samples` then
    :func:`mask_to_latents`. Without an inpaint request the official mask is ``zeros(B, 1, L)``."""
    samples = inpaint_mask_samples(
        batch_size, audio_sample_size, sample_rate, seconds_total, regions=regions, mask=mask, device=device
    )
    return mask_to_latents(samples, latent_len)[:, None]
