"""Text widgets -> values: per-item prompt lists, duration lists, inpaint regions.

Pure functions with no ComfyUI import, so they can be reasoned about (and tested) on their own. Every
error is a ValueError whose message names the widget and says what was expected, because ComfyUI shows
the message as is on the node.
"""

from __future__ import annotations

import math
import re

ITEM_SEPARATOR = "---"
"""A line holding only this splits a prompt widget into one prompt per batch item."""

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_REGION = re.compile(rf"^\s*({_NUMBER})\s*s?\s*(?:-|–|to)\s*({_NUMBER})\s*s?\s*$")
_LIST_SPLIT = re.compile(r"[,;\n]+")


def split_items(text: str) -> list[str]:
    """``"a\\n---\\nb"`` -> ``["a", "b"]``; text without a separator line is one item (kept verbatim,
    minus surrounding whitespace). Items are stripped; an item may be empty (an empty prompt)."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    items: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == ITEM_SEPARATOR:
            items.append([])
        else:
            items[-1].append(line)
    return ["\n".join(lines).strip() for lines in items]


def per_item_prompts(prompt: str, negative_prompt: str) -> tuple[list[str], list[str] | None]:
    """The prompt widget's items, and the negative prompt's: ``None`` when the negative widget is empty
    (no negative conditioning, the official default), else one negative shared by every item or one per
    item."""
    prompts = split_items(prompt)
    if not negative_prompt.strip():
        return prompts, None
    negatives = split_items(negative_prompt)
    if len(negatives) == 1:
        return prompts, negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(
            f"negative_prompt has {len(negatives)} items but prompt has {len(prompts)}: give one negative "
            f"prompt for all items or one per item (separate items with a line '{ITEM_SEPARATOR}')"
        )
    return prompts, negatives


def parse_number_list(text: str, name: str) -> list[float]:
    """``"3, 2.5; 4"`` -> ``[3.0, 2.5, 4.0]`` (commas, semicolons or new lines between numbers)."""
    values = []
    for part in _LIST_SPLIT.split(text.strip()):
        part = part.strip().removesuffix("s").strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{name}: {part!r} is not a number (expected e.g. '4, 8, 2.5')") from None
        if not math.isfinite(value):
            raise ValueError(f"{name}: {part!r} is not a finite number")
        values.append(value)
    return values


def item_durations(duration: float, per_item_durations: str, items: int) -> list[float]:
    """One duration per item: the ``per_item_durations`` list when given (it must have one value per
    item, or a single value for all), else ``duration`` for every item."""
    if not per_item_durations.strip():
        return [float(duration)] * items
    values = parse_number_list(per_item_durations, "per_item_durations")
    if len(values) == 1:
        return values * items
    if len(values) != items:
        raise ValueError(f"per_item_durations has {len(values)} values but there are {items} prompts")
    return values


def parse_regions(text: str) -> list[tuple[float, float]]:
    """``"0.5-1.0, 2.5-3.5"`` -> ``[(0.5, 1.0), (2.5, 3.5)]`` (seconds; ``to`` or a dash between bounds).

    Only the syntax is checked here; the order of the bounds and the duration are checked by
    ``sa3_core.masks.validate_regions``, whose messages say which region is wrong.
    """
    regions = []
    for part in _LIST_SPLIT.split(text.strip()):
        if not part.strip():
            continue
        match = _REGION.match(part)
        if match is None:
            raise ValueError(f"regions: cannot read {part.strip()!r}; write start-end in seconds, e.g. '0.5-1.0, 2.5-3.5'")
        regions.append((float(match[1]), float(match[2])))
    if not regions:
        raise ValueError("regions: no region given; write start-end in seconds, e.g. '0.5-1.0, 2.5-3.5'")
    return regions


def choose(name: str, value: object, options: tuple[str, ...] | list[str]) -> str:
    """A combo value checked against its options (ComfyUI 0.3.75 does not check V3 combos itself)."""
    if value not in options:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, options))}")
    return value  # type: ignore[return-value]
