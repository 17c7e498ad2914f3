"""Developer tool (not a test): screenshots of the workflows in the real frontend, after a run.

    python tests/e2e/make_screenshots.py       # after make_ui_workflows.py; needs ../shared/fixtures (LoRAs)

Each UI workflow in workflows/ is dropped onto the canvas of a 1600 x 1000 browser window (the frontend fits
it into the window), run on the tiny random-weight model placed under the Comfy-Org file names (so the audio
and its spectrogram are noise), and photographed once the spectrogram previews are shown:

* workflows/<name>.jpg: the template browser's thumbnail (ComfyUI serves workflows/ at
  /api/workflow_templates/<pack>/ and the frontend asks for <name>.jpg; its cards are square): the graph part
  of the screenshot, padded to a square, 512 x 512;
* docs/screenshots/<name>.png for the workflows in DOCS: the whole window, as a user sees it.

It also draws docs/icon.png, the registry icon ([tool.comfy] Icon): the example clip's log-mel spectrogram.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

from conftest import PACK_FOLDER, REPO_ROOT, _cache_dir
from PIL import Image

from comfy_host import ComfyClient, ComfyServer, prepare_comfy_tree
from frontend import ComfyFrontend, frozen
from sa3_assets import SA3_LORAS, SA3_SINGLE_FILE, SA3_TEXT_ENCODER_FILE, sa3_example_clip

WORKFLOWS = REPO_ROOT / "workflows"
DOCS = REPO_ROOT / "docs" / "screenshots"
DOCS_WORKFLOWS = ("sa3_text_to_audio", "sa3_inpainting")
FIXTURE_LORAS = REPO_ROOT.parent / "shared" / "fixtures" / "loras"
WINDOW = (1600, 1000)
THUMBNAIL = 512
ICON = 400  # the registry asks for a square icon of at most 400 px

# The graph's bounding box on screen, in CSS pixels (node titles included).
_GRAPH_BOX = """() => {
    const canvas = window.app.canvas;
    const [ox, oy] = canvas.ds.offset, s = canvas.ds.scale;
    const boxes = window.app.graph.nodes.map(n => n.boundingRect);
    const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
    const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
    return [(x0 + ox) * s, (y0 + oy) * s, (x1 + ox) * s, (y1 + oy) * s];
}"""


def first_run_quiet(comfy: ComfyClient, ui: ComfyFrontend) -> None:
    """No first-visit template dialog, no "Nodes 2.0" banner and no minimap over the canvas."""
    comfy.set_setting("Comfy.TutorialCompleted", True)
    comfy.set_setting("Comfy.Minimap.Visible", False)
    ui.page.evaluate("() => localStorage.setItem('vueNodesBannerDismissed', 'true')")
    ui.open()


def thumbnail(screenshot: bytes, box: list[float]) -> Image.Image:
    """The graph's part of a screenshot (with a margin), padded to a square in the canvas colour."""
    image = Image.open(io.BytesIO(screenshot)).convert("RGB")
    margin = 16
    left, top = max(0, int(box[0]) - margin), max(0, int(box[1]) - margin)
    right, bottom = min(image.width, int(box[2]) + margin), min(image.height, int(box[3]) + margin)
    graph = image.crop((left, top, right, bottom))
    side = max(graph.size)
    square = Image.new("RGB", (side, side), image.getpixel((left, top)))
    square.paste(graph, ((side - graph.width) // 2, (side - graph.height) // 2))
    return square.resize((THUMBNAIL, THUMBNAIL), Image.LANCZOS)


def write_icon(path: Path) -> None:
    """The example clip's log-mel spectrogram up to 4 kHz (where its notes are), ICON x ICON, without labels."""
    import dataclasses

    import torch

    from sa3_core.spectrogram import colorize, spectrogram

    rate, samples = sa3_example_clip()
    spec = spectrogram(torch.from_numpy(samples)[None], rate, scale="mel", width=ICON, dynamic_range_db=70)
    rows = int((spec.row_frequencies < 4000).sum())
    spec = dataclasses.replace(spec, db=spec.db[:, :rows], row_frequencies=spec.row_frequencies[:rows])
    pixels = (colorize(spec, ICON, ICON)[0] * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def main() -> int:
    sys.path.insert(0, str(REPO_ROOT))  # sa3_core (host-free) writes the tiny model
    from sa3_core.tiny import write_tiny_checkpoint, write_tiny_single_files

    DOCS.mkdir(parents=True, exist_ok=True)
    write_icon(DOCS.parent / "icon.png")
    print("docs/icon.png")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = write_tiny_checkpoint(scratch / "tiny", "small", seed=0)
        model_file, text_encoder_file = write_tiny_single_files(
            folder, scratch / SA3_SINGLE_FILE, scratch / SA3_TEXT_ENCODER_FILE
        )
        with ComfyServer(
            prepare_comfy_tree(_cache_dir()), scratch / "base", custom_nodes={PACK_FOLDER: REPO_ROOT}
        ) as server:
            server.link(f"models/checkpoints/{SA3_SINGLE_FILE}", model_file)
            server.link(f"models/text_encoders/{SA3_TEXT_ENCODER_FILE}", text_encoder_file)
            for name in SA3_LORAS:
                server.link(f"models/loras/{name}", FIXTURE_LORAS / name)
            comfy = ComfyClient(server.url)
            with ComfyFrontend(server.url, viewport=WINDOW, timeout_s=300) as ui:
                first_run_quiet(comfy, ui)
                for path in sorted(WORKFLOWS.glob("*.json")):
                    ui.drop_workflow(json.loads(path.read_text()), path.name)
                    prompt_id = ui.queue()
                    with frozen(ui):
                        result = comfy.wait_for(prompt_id, timeout_s=600)
                    if not result.ok:
                        raise RuntimeError(f"{path.name} failed: {result.messages}")
                    ui.wait_for_previews()
                    ui.page.wait_for_timeout(500)  # one more redraw of the canvas with the pictures
                    shot = ui.page.screenshot()
                    thumbnail(shot, ui.page.evaluate(_GRAPH_BOX)).save(WORKFLOWS / f"{path.stem}.jpg", quality=85)
                    print(f"workflows/{path.stem}.jpg")
                    if path.stem in DOCS_WORKFLOWS:
                        (DOCS / f"{path.stem}.png").write_bytes(shot)
                        print(f"docs/screenshots/{path.stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
