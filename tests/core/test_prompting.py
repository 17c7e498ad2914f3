"""The prompt builder's assembly rule (sa3_core.prompting), checked against the official prompt guide's examples."""

from __future__ import annotations

import pytest

from sa3_core.prompting import KEYS, PromptSpec, build_prompt, split_list


def test_music_prompt_has_the_guides_tags_in_order() -> None:
    spec = PromptSpec(
        mode="music",
        genres=["Funk", "Jazz"],
        instruments=["Guitar", "Saxophone", "Bass", "Piano"],
        moods=["Playful", "Warm"],
        bpm=120,
        key="A minor",
        description="A funky hip hop instrumental with live recorded instrumentation.",
    )
    assert build_prompt(spec) == (
        "TrackType: Music, VocalType: Instrumental, Genre: Funk, Genre: Jazz, "
        "Instruments: Guitar, Saxophone, Bass, Piano, Mood: Playful, Warm, 120 BPM, Key: A minor, "
        "A funky hip hop instrumental with live recorded instrumentation."
    )


def test_instrument_prompt_reproduces_the_guides_example() -> None:
    spec = PromptSpec(mode="instrument", format="Duo", description="a dynamic Latin drums and percussion track.")
    assert build_prompt(spec) == "TrackType: Instrument, Format: Duo, a dynamic Latin drums and percussion track."


def test_sfx_prompt_has_no_vocal_type() -> None:
    spec = PromptSpec(mode="sfx", description="A classic, natural recording of 14-inch hi-hats played tightly closed.")
    assert build_prompt(spec) == (
        "TrackType: SFX, A classic, natural recording of 14-inch hi-hats played tightly closed."
    )


def test_vocal_type_none_and_empty_fields_are_left_out() -> None:
    assert build_prompt(PromptSpec(mode="music", vocal_type="none")) == "TrackType: Music"
    assert build_prompt(PromptSpec(mode="music", bpm=0, key="none", format="  ")) == (
        "TrackType: Music, VocalType: Instrumental"
    )


def test_description_becomes_one_line() -> None:
    spec = PromptSpec(mode="sfx", description="  a door\n---\n  slams   shut  ")
    assert build_prompt(spec) == "TrackType: SFX, a door --- slams shut"  # never split into batch items


def test_split_list_trims_and_drops_empty_entries() -> None:
    assert split_list(" Funk, Jazz ,,\nSoul ") == ["Funk", "Jazz", "Soul"]
    assert split_list("") == []


def test_keys_cover_every_major_and_minor_key() -> None:
    assert len(KEYS) == 1 + 24 and "F# major" in KEYS and "Bb minor" in KEYS


@pytest.mark.parametrize(
    "spec, message",
    [
        (PromptSpec(mode="song"), "mode must be one of music, instrument, sfx"),
        (PromptSpec(vocal_type="Choir"), "vocal_type"),
        (PromptSpec(key="H minor"), "key must be"),
        (PromptSpec(bpm=-1), "bpm must be"),
        (PromptSpec(bpm=301), "bpm must be"),
        (PromptSpec(bpm=True), "bpm must be"),
        (PromptSpec(genres=["Funk, Jazz"]), "genres entries"),
        (PromptSpec(instruments=[""]), "instruments entries"),
    ],
)
def test_bad_values_are_named(spec: PromptSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_prompt(spec)
