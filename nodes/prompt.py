"""SA3_PromptBuilder: mode + AudioSparx-style tags + free text -> the prompt STRING for Text Encode.

The assembly rule lives in ``sa3_core.prompting``; the tooltips quote the official prompt guide
(docs/guides/prompting.md in Stability-AI/stable-audio-3).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..sa3_core.prompting import KEYS, MAX_BPM, MODES, NO_KEY, VOCAL_TYPES, PromptSpec, build_prompt, split_list
from .common import CATEGORY


class SA3PromptBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_PromptBuilder",
            display_name="Stable Audio 3 Prompt Builder",
            category=f"{CATEGORY}/conditioning",
            description=(
                "Writes a prompt the way the official Stable Audio 3 prompt guide recommends: AudioSparx-style "
                "tags (TrackType, VocalType, Format, Genre, Instruments, Mood, BPM, Key) followed by a free "
                'description. "Prompts that align with that kind of text and audio tend to produce the best '
                'results." Connect the output to the prompt of Stable Audio 3 Text Encode.'
            ),
            inputs=[
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default="music",
                    tooltip=(
                        "music: 'TrackType: Music, VocalType: Instrumental - tends to produce higher quality, more "
                        "semantically coherent outputs'. instrument (stems, solo instruments): 'Start with TrackType: "
                        "Instrument to maximize your chances of getting an isolated instrument'. sfx: 'TrackType: SFX "
                        "- tends to produce more semantically reasonable sound effects and samples'. small-music "
                        "does music and stems, small-sfx sound effects, medium all three."
                    ),
                ),
                io.String.Input(
                    "description",
                    multiline=True,
                    default="",
                    tooltip=(
                        "Free text after the tags. Music: genre, instruments ('how does each instrument sound or "
                        "feel?'), mood and energy. SFX: 'the core source', 'the action' (e.g. 'slamming shut with "
                        "fast decay') and 'the production' (e.g. 'recorded in a dead room'). Stems: 'Experiment with "
                        "specifying technique, recording environment, and effects'. 'More detail generally means "
                        "better results.'"
                    ),
                ),
                io.String.Input(
                    "genre",
                    default="",
                    tooltip=(
                        "Comma-separated; each becomes a tag: 'you can specify multiple genres like Genre: Funk, "
                        "Genre: Jazz, or even combine unrelated genres'. Empty: no genre tag."
                    ),
                ),
                io.String.Input(
                    "instruments",
                    default="",
                    tooltip=(
                        "Comma-separated, written as one tag, e.g. 'Instruments: Guitar, Saxophone, Bass, Piano'. "
                        "Empty: no instruments tag."
                    ),
                ),
                io.String.Input(
                    "mood",
                    default="",
                    tooltip=(
                        "Comma-separated moods, one 'Mood:' tag ('What emotions or atmosphere are you going for?'). "
                        "Empty: no mood tag."
                    ),
                ),
                io.Int.Input(
                    "bpm",
                    default=0,
                    min=0,
                    max=MAX_BPM,
                    tooltip=("Tempo: 'Specify tempo, e.g. \"120 BPM\"'. 0: no tempo."),
                ),
                io.Combo.Input(
                    "key",
                    options=list(KEYS),
                    default=NO_KEY,
                    tooltip=("Musical key, written 'Key: A minor'. none: no key tag."),
                ),
                io.Combo.Input(
                    "vocal_type",
                    options=list(VOCAL_TYPES),
                    default="Instrumental",
                    tooltip=(
                        "Music mode only: 'VocalType: Instrumental'. 'Our models don't output intelligible vocals, "
                        "they sometimes generate unintelligible vocal textures.' none: leave the tag out."
                    ),
                ),
                io.String.Input(
                    "format",
                    default="",
                    tooltip=(
                        "E.g. 'Duo': 'Format: Duo - for when you want multiple instruments' (stems). Empty: no "
                        "format tag."
                    ),
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="prompt",
                    tooltip=(
                        "The prompt text, e.g. 'TrackType: Music, VocalType: Instrumental, Genre: Funk, 120 BPM, ...'."
                    ),
                )
            ],
        )

    @classmethod
    def execute(
        cls,
        mode: str,
        description: str = "",
        genre: str = "",
        instruments: str = "",
        mood: str = "",
        bpm: int = 0,
        key: str = NO_KEY,
        vocal_type: str = "Instrumental",
        format: str = "",
    ) -> io.NodeOutput:
        spec = PromptSpec(
            mode=mode,
            description=description,
            genres=split_list(genre),
            instruments=split_list(instruments),
            moods=split_list(mood),
            bpm=bpm,
            key=key,
            vocal_type=vocal_type,
            format=format,
        )
        return io.NodeOutput(build_prompt(spec))
