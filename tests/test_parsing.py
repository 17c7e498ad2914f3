"""nodes/parsing.py, the widget text parsers: lengths checked before any work, one pass over the text, no
regular expressions (whose backtracking made a 16 kB region text take seconds inside the server's request
handler), and the syntax they accept.

The module imports nothing outside the standard library, so it is loaded from its file here, without ComfyUI
(importing the ``nodes`` package would import ComfyUI).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PARSING = Path(__file__).resolve().parents[1] / "nodes" / "parsing.py"


def _load():
    spec = importlib.util.spec_from_file_location("sa3_nodes_parsing", PARSING)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parsing = _load()
LIMITS = dict(max_chars=1000)


def test_the_parsers_use_no_regular_expressions() -> None:
    """The rule behind linear time: no backtracking engine at all (the bench shows the figures)."""
    imported = set()
    for node in ast.walk(ast.parse(PARSING.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"__future__", "math"}, imported


@pytest.mark.parametrize(
    "call",
    [
        lambda text: parsing.parse_regions(text),
        lambda text: parsing.parse_number_list(text, "per_item_durations"),
        lambda text: parsing.item_durations(1.0, text, 1),
    ],
    ids=["regions", "number list", "per-item durations"],
)
def test_list_widgets_refuse_long_text_before_reading_it(call, monkeypatch) -> None:
    def no_reading(text: str) -> list[str]:
        raise AssertionError("the text was read although it is too long")

    monkeypatch.setattr(parsing, "_list_parts", no_reading)
    adversarial = "1" * (parsing.MAX_LIST_CHARS + 1)  # the digit run that made the old regex quadratic
    with pytest.raises(
        ValueError, match=f"{parsing.MAX_LIST_CHARS + 1} characters, more than the {parsing.MAX_LIST_CHARS} allowed"
    ):
        call(adversarial)


@pytest.mark.parametrize(
    "text",
    ["1" * 4000, "1" + " " * 4000 + "x", "1e" * 2000, "0." * 2000 + "-"],
    ids=["digits", "spaces", "exponents", "dots"],
)
def test_adversarial_region_text_within_the_cap_is_refused_as_unreadable(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        parsing.parse_regions(text)


def test_prompt_widgets_refuse_too_much_text_before_splitting() -> None:
    with pytest.raises(ValueError, match="prompt: 1001 characters, more than the 1000 allowed"):
        parsing.per_item_prompts("a" * 1001, "", **LIMITS)
    with pytest.raises(ValueError, match="negative_prompt: 1001 characters"):
        parsing.per_item_prompts("a", "b" * 1001, **LIMITS)
    with pytest.raises(ValueError, match="expected text, got int"):
        parsing.per_item_prompts(3, "", **LIMITS)


def test_prompt_items() -> None:
    assert parsing.per_item_prompts("piano", "", **LIMITS) == (["piano"], None)
    assert parsing.per_item_prompts("piano\n---\n drums \n---\n", "  ", **LIMITS) == (["piano", "drums", ""], None)
    assert parsing.per_item_prompts("a\n---\nb", "noise", **LIMITS) == (["a", "b"], ["noise", "noise"])
    assert parsing.per_item_prompts("a\n---\nb", "x\n---\ny", **LIMITS) == (["a", "b"], ["x", "y"])
    assert parsing.per_item_prompts("two\nlines", "", **LIMITS) == (["two\nlines"], None)
    with pytest.raises(ValueError, match="negative_prompt has 3 items but prompt has 2"):
        parsing.per_item_prompts("a\n---\nb", "x\n---\ny\n---\nz", **LIMITS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5-1.0, 2.5-3.5", [(0.5, 1.0), (2.5, 3.5)]),
        ("0.5 - 1.0; 2 to 3\n4–5", [(0.5, 1.0), (2.0, 3.0), (4.0, 5.0)]),
        ("1s-2s, 3 s - 4 s", [(1.0, 2.0), (3.0, 4.0)]),
        (".5-1, 2.-3", [(0.5, 1.0), (2.0, 3.0)]),
        ("1e-3-2e-3, 1E+1-2e1", [(0.001, 0.002), (10.0, 20.0)]),
        ("  ,2-4,, ", [(2.0, 4.0)]),
    ],
)
def test_regions_syntax(text: str, expected: list[tuple[float, float]]) -> None:
    assert parsing.parse_regions(text) == expected


@pytest.mark.parametrize(
    "text", ["0.5 to", "1", "-1-2", "a-b", "1-2-3", "inf-1", "1-nan", "1_0-2", "+1-2", "1e999-2", "1..2-3", "2-3x"]
)
def test_unreadable_regions(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read .*write start-end in seconds"):
        parsing.parse_regions(text)


def test_no_region() -> None:
    with pytest.raises(ValueError, match="no region given"):
        parsing.parse_regions(" , ;")


def test_number_lists_and_per_item_durations() -> None:
    assert parsing.parse_number_list("3, 2.5; 4\n1s", "d") == [3.0, 2.5, 4.0, 1.0]
    assert parsing.item_durations(5.0, "", 3) == [5.0, 5.0, 5.0]
    assert parsing.item_durations(5.0, "2", 3) == [2.0, 2.0, 2.0]
    assert parsing.item_durations(5.0, "1, 2, 3", 3) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="per_item_durations has 2 values but there are 3 prompts"):
        parsing.item_durations(5.0, "1, 2", 3)
    with pytest.raises(ValueError, match="'x' is not a number"):
        parsing.parse_number_list("1, x", "d")
    with pytest.raises(ValueError, match="'nan' is not a finite number"):
        parsing.parse_number_list("nan", "d")
