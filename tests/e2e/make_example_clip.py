"""Developer tool (not a test): synthesize the example clip the audio-input workflows load.

    python tests/e2e/make_example_clip.py     # writes workflows/input/sa3_example_clip.flac (needs PyAV, as ComfyUI)

The clip is made here from sine waves, so it is ours (MIT, like the repository) and free of any recording's
license: 4 s, stereo, 44.1 kHz, 16-bit FLAC, a plucked A minor - F major arpeggio over two soft bass notes.
The pack copies it into ComfyUI's input/ folder at start-up (nodes/example_inputs.py); the e2e tests check
that the shipped file decodes to exactly `synthesize()`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIP = REPO_ROOT / "workflows" / "input" / "sa3_example_clip.flac"
SAMPLE_RATE = 44100
SECONDS = 4.0
PEAK = 0.6  # about -4.4 dBFS

# (start s, MIDI note, pan -1 left .. 1 right): two bars of eighth-note arpeggios, A minor then F major.
_ARPEGGIO = [
    (i * 0.25, note, (-0.4, 0.4)[i % 2])
    for i, note in enumerate([57, 60, 64, 69, 64, 60, 57, 60, 53, 57, 60, 65, 60, 57, 53, 57])
]
_BASS = [(0.0, 45), (2.0, 41)]  # A2, F2


def _hz(note: int) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def _pluck(hz: float, length: int, decay_s: float) -> np.ndarray:
    """A plucked tone: three harmonics, 5 ms attack, exponential decay."""
    t = np.arange(length) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * hz * t) + 0.4 * np.sin(4 * np.pi * hz * t) + 0.15 * np.sin(6 * np.pi * hz * t)
    return tone * np.minimum(1.0, t / 0.005) * np.exp(-t / decay_s)


def synthesize() -> np.ndarray:
    """The clip as int16 samples, (2 channels, SECONDS * SAMPLE_RATE)."""
    total = int(SECONDS * SAMPLE_RATE)
    mix = np.zeros((2, total))
    for start, note, pan in _ARPEGGIO:
        begin = int(start * SAMPLE_RATE)
        tone = _pluck(_hz(note), total - begin, decay_s=0.35)
        mix[0, begin:] += tone * np.sqrt((1 - pan) / 2)
        mix[1, begin:] += tone * np.sqrt((1 + pan) / 2)
    for start, note in _BASS:
        begin = int(start * SAMPLE_RATE)
        mix[:, begin:] += 0.8 * _pluck(_hz(note), total - begin, decay_s=1.2)
    fade = np.minimum(1.0, (total - np.arange(total)) / (0.05 * SAMPLE_RATE))  # no click at the end
    mix *= fade * PEAK / np.abs(mix).max()
    return np.round(mix * 32767).astype(np.int16)


def write_flac(pcm: np.ndarray, path: Path) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="flac") as container:
        container.metadata["title"] = "Stable Audio 3 nodes example clip"
        container.metadata["comment"] = "synthesized by tests/e2e/make_example_clip.py (MIT)"
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm.T).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def main() -> int:
    write_flac(synthesize(), CLIP)
    print(f"{CLIP.relative_to(REPO_ROOT)}: {CLIP.stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
