"""Text widgets -> values: per-item prompt lists, duration lists, inpaint regions.

Pure functions with no import outside the standard library (not even of the pack), so they can be reasoned
about and tested on their own; the prompt length limit is passed in by the nodes, and what the values must be
(batch size, durations, regions) is checked by the nodes with sa3_core.validation. Every error is a ValueError
whose message names the widget and says what was expected, because ComfyUI shows the message as is on the node.

Some of these run inside ComfyUI's queue-time ``validate_inputs``, i.e. in the server's request handler, where
a slow parse would hold up every other request. So every parser checks the text's length first, before any
other work, and then reads it in one pass: no regular expressions, whose backtracking can take time growing
with the square of the length.
"""

from __future__ import annotations

import math

ITEM_SEPARATOR = "---"
"""A line holding only this splits a prompt widget into one prompt per batch item."""

MAX_LIST_CHARS = 4096
"""The longest regions or per-item durations text. Far more than any real list needs (64 durations such as
'119.5' take about 450 characters), and short enough that reading it is instant."""

_LIST_SEPARATORS = (";", "\n")  # read as commas
_RANGE_WORDS = ("to", "–")  # between a region's bounds, besides a dash
_NUMBER_START = frozenset("0123456789.")
_NUMBER_CHARS = frozenset("0123456789.eE+-")
_EXAMPLE_REGIONS = "write start-end in seconds, e.g. '0.5-1.0, 2.5-3.5'"


def check_text(text: object, name: str, max_chars: int) -> str:
    """``text`` itself when it is a string of at most ``max_chars`` characters (checked before any parsing)."""
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ValueError(f"{name}: {len(text)} characters, more than the {max_chars} allowed")
    return text


def split_items(text: str, name: str, *, max_chars: int) -> list[str]:
    """``"a\\n---\\nb"`` -> ``["a", "b"]``; text without a separator line is one item (kept verbatim,
    minus surrounding whitespace). Items are stripped; an item may be empty (an empty prompt). At most
    ``max_chars`` characters (which bounds the number of items too)."""
    check_text(text, name, max_chars)
    items: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == ITEM_SEPARATOR:
            items.append([])
        else:
            items[-1].append(line)
    return ["\n".join(lines).strip() for lines in items]


def per_item_prompts(prompt: str, negative_prompt: str, *, max_chars: int) -> tuple[list[str], list[str] | None]:
    """The prompt widget's items, and the negative prompt's: ``None`` when the negative widget is empty
    (no negative conditioning, the official default), else one negative shared by every item or one per
    item. Each widget holds at most ``max_chars`` characters."""
    prompts = split_items(prompt, "prompt", max_chars=max_chars)
    negatives = split_items(negative_prompt, "negative_prompt", max_chars=max_chars)
    if negatives == [""]:
        return prompts, None
    if len(negatives) == 1:
        return prompts, negatives * len(prompts)
    if len(negatives) != len(prompts):
        raise ValueError(
            f"negative_prompt has {len(negatives)} items but prompt has {len(prompts)}: give one negative "
            f"prompt for all items or one per item (separate items with a line '{ITEM_SEPARATOR}')"
        )
    return prompts, negatives


def _list_parts(text: str) -> list[str]:
    """The non-empty, stripped parts of a list separated by commas, semicolons or new lines."""
    for separator in _LIST_SEPARATORS:
        text = text.replace(separator, ",")
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_number_list(text: str, name: str) -> list[float]:
    """``"3, 2.5; 4"`` -> ``[3.0, 2.5, 4.0]`` (commas, semicolons or new lines between numbers; an ``s``
    after a number is allowed). At most :data:`MAX_LIST_CHARS` characters."""
    values = []
    for part in _list_parts(check_text(text, name, MAX_LIST_CHARS)):
        part = part.removesuffix("s").strip()
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
    values = parse_number_list(per_item_durations, "per_item_durations")
    if not values:
        return [float(duration)] * items
    if len(values) == 1:
        return values * items
    if len(values) != items:
        raise ValueError(f"per_item_durations has {len(values)} values but there are {items} prompts")
    return values


def _seconds(text: str) -> float | None:
    """A plain non-negative decimal number of seconds ('2', '0.5', '.5', '3.', '1e-3', optionally followed
    by 's'), else None. Signs, words and underscores, which ``float`` would take ('inf', '1_0'), are not."""
    text = text.strip().removesuffix("s").strip()
    if not text or text[0] not in _NUMBER_START or not set(text) <= _NUMBER_CHARS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _split_range(text: str) -> tuple[str, str] | None:
    """``"0.5-1.0"`` / ``"0.5 to 1"`` / ``"0.5–1"`` -> the two bounds' texts, or None without a range mark.
    A dash right after ``e`` belongs to an exponent (``1e-3``), not to the range."""
    for word in _RANGE_WORDS:
        if word in text:
            start, _, end = text.partition(word)
            return start, end
    for i in range(1, len(text)):
        if text[i] == "-" and text[i - 1] not in "eE":
            return text[:i], text[i + 1 :]
    return None


def parse_regions(text: str) -> list[tuple[float, float]]:
    """``"0.5-1.0, 2.5-3.5"`` -> ``[(0.5, 1.0), (2.5, 3.5)]`` (seconds; ``to`` or a dash between bounds).
    At most :data:`MAX_LIST_CHARS` characters.

    Only the syntax is checked here; the order of the bounds and the duration are checked by
    ``sa3_core.validation.validate_regions``, whose messages say which region is wrong.
    """
    regions = []
    for part in _list_parts(check_text(text, "regions", MAX_LIST_CHARS)):
        bounds = _split_range(part)
        start, end = (None, None) if bounds is None else (_seconds(bounds[0]), _seconds(bounds[1]))
        if start is None or end is None:
            raise ValueError(f"regions: cannot read {part!r}; {_EXAMPLE_REGIONS}")
        regions.append((start, end))
    if not regions:
        raise ValueError(f"regions: no region given; {_EXAMPLE_REGIONS}")
    return regions


def choose(name: str, value: object, options: tuple[str, ...] | list[str]) -> str:
    """A combo value checked against its options (ComfyUI 0.3.75 does not check V3 combos itself)."""
    if value not in options:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, options))}")
    return value  # type: ignore[return-value]
