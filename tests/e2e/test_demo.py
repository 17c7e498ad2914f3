"""The README's "set up and run" command: `.ci/demo` (its install steps are .ci/setup.sh, which CI runs too).

The launcher is run for real, with `--once`: it starts ComfyUI 0.3.75 with the pack, lists the pack's
workflows in the template browser, falls back to a labelled tiny random checkpoint when the models folder has
no SA3 model, queues the text-to-audio workflow, and reports the audio file it wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from comfy_host import decode_audio, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_text_to_audio_on_the_tiny_checkpoint(comfy_tree: Path, tmp_path: Path) -> None:
    home = tmp_path / "demo"
    home.mkdir()
    (home / comfy_tree.name).symlink_to(comfy_tree)  # reuse the prepared ComfyUI tree instead of copying it again
    result = subprocess.run(
        [sys.executable, ".ci/demo.py", "--once", "--port", str(free_port()), "--home", str(home)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = home / "base" / "comfyui.log"
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{log.read_text() if log.exists() else ''}"
    out = result.stdout
    assert "No Stable Audio 3 checkpoint in" in out and "TINY RANDOM WEIGHTS" in out
    assert (home / "base" / "models" / "stable_audio_3" / "tiny-random-sa3-small" / "TINY_RANDOM_WEIGHTS.txt").is_file()
    templates = next(line for line in out.splitlines() if line.startswith("Template browser"))
    for name in (
        "sa3_text_to_audio",
        "sa3_audio_to_audio",
        "sa3_inpainting",
        "sa3_continuation",
        "sa3_batch_prompts",
        "sa3_lora_stack",
    ):
        assert name in templates
    written = sorted((home / "base" / "output").rglob("*.flac"))
    assert len(written) == 1 and str(written[0]) in out
    audio, rate = decode_audio(written[0].read_bytes())
    assert rate == 44100 and audio.shape[0] == 2 and audio.shape[-1] == 10 * 44100  # the workflow asks for 10 s
