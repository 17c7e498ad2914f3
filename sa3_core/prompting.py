"""Prompts in the style of the official prompt guide (``docs/guides/prompting.md`` of Stability-AI/stable-audio-3).

SA3 was trained on Freesound and AudioSparx audio with their metadata, so prompts that look like that
metadata work best. The guide recommends AudioSparx tags in front of a free description, e.g.

    TrackType: Music, VocalType: Instrumental, Genre: Funk, Genre: Jazz, Instruments: Guitar, Bass, 120 BPM, ...
    TrackType: Instrument, Format: Duo, a dynamic Latin drums and percussion track.
    TrackType: SFX, a blunt, powerful "thud" made by slamming a wooden desk drawer shut.

:func:`build_prompt` writes exactly that shape: the mode's ``TrackType`` first, then the tags that were given,
then the description, all joined by ", ". Rules (each from the guide unless said otherwise):

* ``TrackType: Music`` / ``Instrument`` / ``SFX`` for the three generation modes.
* ``VocalType: Instrumental`` only in music mode (the guide pairs it with ``TrackType: Music``).
* One ``Genre:`` tag per genre ("you can specify multiple genres like ``Genre: Funk, Genre: Jazz``").
* One ``Instruments:`` tag listing every instrument (``Instruments: Guitar, Saxophone, Bass, Piano``).
* ``Format:`` e.g. ``Duo`` "for when you want multiple instruments" (stems).
* Tempo as ``120 BPM`` (the guide's spelling).
* Mood and key are not spelled out by the guide; they follow the AudioSparx field style: one
  ``Mood:`` tag listing the moods (as ``Instruments:``) and ``Key: A minor``.

Lists are given as comma-separated text; empty entries are dropped and surrounding whitespace is trimmed.
Nothing is ever reordered, deduplicated or guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MODES = {"music": "Music", "instrument": "Instrument", "sfx": "SFX"}
"""Generation mode -> its ``TrackType`` value."""

VOCAL_TYPES = ("Instrumental", "none")
"""``none`` leaves the VocalType tag out."""

NO_KEY = "none"
_NOTES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEYS = (NO_KEY,) + tuple(f"{note} {quality}" for note in _NOTES for quality in ("major", "minor"))

MAX_BPM = 300


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt says, before it is written out (see the module docstring for the rules)."""

    mode: str = "music"
    description: str = ""
    genres: Sequence[str] = ()
    instruments: Sequence[str] = ()
    moods: Sequence[str] = ()
    bpm: int = 0  # 0: no tempo tag
    key: str = NO_KEY
    vocal_type: str = "Instrumental"  # music mode only
    format: str = ""


def split_list(text: str) -> list[str]:
    """``"Funk, Jazz ,, Soul"`` -> ``["Funk", "Jazz", "Soul"]`` (commas or new lines between entries)."""
    if not isinstance(text, str):
        raise ValueError(f"expected comma-separated text, got {type(text).__name__}")
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def validate_spec(spec: PromptSpec) -> None:
    """A ValueError naming the field for any value outside its choices."""
    if spec.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    if spec.vocal_type not in VOCAL_TYPES:
        raise ValueError(f"vocal_type must be one of {', '.join(VOCAL_TYPES)}, got {spec.vocal_type!r}")
    if spec.key not in KEYS:
        raise ValueError(f"key must be 'none' or a key such as 'A minor' or 'F# major', got {spec.key!r}")
    if isinstance(spec.bpm, bool) or not isinstance(spec.bpm, int) or not 0 <= spec.bpm <= MAX_BPM:
        raise ValueError(f"bpm must be a whole number from 0 (no tempo) to {MAX_BPM}, got {spec.bpm!r}")
    for name in ("genres", "instruments", "moods"):
        for entry in getattr(spec, name):
            if not isinstance(entry, str) or not entry.strip() or "," in entry:
                raise ValueError(f"{name} entries must be non-empty text without commas, got {entry!r}")


def prompt_tags(spec: PromptSpec) -> list[str]:
    """The tags of a prompt, in the order they are written."""
    validate_spec(spec)
    tags = [f"TrackType: {MODES[spec.mode]}"]
    if spec.mode == "music" and spec.vocal_type != "none":
        tags.append(f"VocalType: {spec.vocal_type}")
    if spec.format.strip():
        tags.append(f"Format: {spec.format.strip()}")
    tags += [f"Genre: {genre.strip()}" for genre in spec.genres]
    if spec.instruments:
        tags.append("Instruments: " + ", ".join(i.strip() for i in spec.instruments))
    if spec.moods:
        tags.append("Mood: " + ", ".join(m.strip() for m in spec.moods))
    if spec.bpm:
        tags.append(f"{spec.bpm} BPM")
    if spec.key != NO_KEY:
        tags.append(f"Key: {spec.key}")
    return tags


def build_prompt(spec: PromptSpec) -> str:
    """The prompt text: the tags, then the description (with its trailing full stop etc. kept as written)."""
    parts = prompt_tags(spec)
    description = " ".join(spec.description.split())  # one line: new lines and runs of spaces become one space
    if description:
        parts.append(description)
    return ", ".join(parts)
