"""The example clip shipped in workflows/input/, copied into ComfyUI's input/ folder at start-up.

The audio-to-audio, inpainting and continuation workflows load ``sa3_example_clip.flac`` with core Load
Audio, which only lists files directly in input/. So that those templates run right after drag-and-drop,
the pack copies its clip there when no file of that name exists (a user's file of the same name is never
replaced). This is a local copy of a file that ships with the pack, not a download. The clip is
synthesized by tests/e2e/make_example_clip.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import folder_paths

EXAMPLE_INPUTS = Path(__file__).resolve().parents[1] / "workflows" / "input"


def install_example_inputs() -> None:
    """Copy each shipped example input into input/ unless a file of that name is there already."""
    input_dir = Path(folder_paths.get_input_directory())
    for source in sorted(EXAMPLE_INPUTS.glob("*.flac")):
        target = input_dir / source.name
        if target.exists():
            continue
        try:
            input_dir.mkdir(parents=True, exist_ok=True)
            # Through a temporary file in the same folder, so input/ never holds a half-written clip.
            with tempfile.NamedTemporaryFile(dir=input_dir, prefix=".sa3-", suffix=".partial", delete=False) as tmp:
                partial = Path(tmp.name)
            try:
                shutil.copyfile(source, partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        except OSError as exc:  # a read-only input/ only costs the example
            logging.warning(
                "Stable Audio 3: could not copy the example clip %s into %s: %s", source.name, input_dir, exc
            )
