"""What a ComfyUI user meets with the pack's templates, in the real frontend in a 1600 x 1000 window.

* Every template dropped onto the canvas runs as it is, with only the (tiny) model present under the file
  names it asks for - the example clip comes from the pack itself - fits the window, and shows its
  spectrogram previews. (The LoRA template also needs its two LoRAs, which the tests place in models/loras:
  no public SA3 LoRA exists to hint.)
* With the model files absent, the frontend's missing-models dialog offers the hinted files for download.
* The template browser shows a thumbnail for each template.
* The shipped example clip is exactly what tests/e2e/make_example_clip.py synthesizes, and the pack copies
  it into input/ at start-up.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from make_example_clip import CLIP, SAMPLE_RATE, SECONDS, synthesize
from PIL import Image

from comfy_host import ComfyClient, ComfyServer
from frontend import ComfyFrontend, frozen
from sa3_assets import SA3_EXAMPLE_CLIP, SA3_SINGLE_FILE, SA3_TEXT_ENCODER_FILE, reset_cache

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_FOLDER = "comfyui-stable-audio-3"  # as conftest links the repository into custom_nodes/
WORKFLOWS = REPO_ROOT / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
WINDOW = (1600, 1000)
COMFY_ORG = "https://huggingface.co/Comfy-Org/stable-audio-3/resolve/main"
HINTED = {SA3_SINGLE_FILE: "checkpoints", SA3_TEXT_ENCODER_FILE: "text_encoders"}  # file -> ComfyUI model folder
BATCH = {"sa3_batch_prompts": 3}  # images per spectrogram preview (one per batch item); 1 elsewhere
SPECTROGRAM_SIZE = (1024 + 64 + 18, 256 + 30 + 48)  # the node's default plot plus its labelled frame

# Screen rectangles (CSS px) of the nodes, the canvas panel (below the menus, right of the side bar) and the
# minimap, and the zoom with the frontend's level-of-detail threshold (below it, nodes are drawn without text).
_VIEW = """() => {
    const canvas = window.app.canvas, [ox, oy] = canvas.ds.offset, scale = canvas.ds.scale;
    const origin = canvas.canvas.getBoundingClientRect();
    const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
                          return [r.left, r.top, r.right, r.bottom]; };
    return {
        scale,
        minScale: window.app.extensionManager.setting.get("LiteGraph.Canvas.MinFontSizeForLOD")
                  / window.LiteGraph.NODE_TEXT_SIZE,
        panel: box(document.querySelector(".graph-canvas-panel")),
        minimap: box(document.querySelector(".litegraph-minimap")),
        nodes: window.app.graph.nodes.map(n => { const [x, y, w, h] = n.boundingRect;
            return [n.title, origin.left + (x + ox) * scale, origin.top + (y + oy) * scale,
                    origin.left + (x + w + ox) * scale, origin.top + (y + h + oy) * scale]; }),
    };
}"""


def ui_workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def missing_models_dialog(ui: ComfyFrontend) -> Any:
    return ui.page.locator(".p-dialog", has_text="Missing Models")


@pytest.fixture(scope="module")
def window(sa3_server: ComfyServer, comfy: ComfyClient, frontend: ComfyFrontend) -> Iterator[ComfyFrontend]:
    """The session's page on the frontend, 1600 x 1000 for this module (one Playwright per process), as a
    returning user has it: no first-visit template dialog (it would cover the canvas) and the "Nodes 2.0"
    banner dismissed. The minimap stays on, as by default."""
    comfy.set_setting("Comfy.TutorialCompleted", True)
    default_size = frontend.page.viewport_size
    frontend.page.set_viewport_size({"width": WINDOW[0], "height": WINDOW[1]})
    frontend.page.evaluate("() => localStorage.setItem('vueNodesBannerDismissed', 'true')")
    frontend.open()
    try:
        yield frontend
    finally:
        frontend.page.set_viewport_size(default_size)
        frontend.open()


@contextmanager
def models_absent(server: ComfyServer, single_files: tuple[Path, Path]) -> Iterator[None]:
    """The hinted model files taken out of models/ (and put back afterwards)."""
    model_file, text_encoder_file = single_files
    placed = {
        f"models/checkpoints/{SA3_SINGLE_FILE}": model_file,
        f"models/text_encoders/{SA3_TEXT_ENCODER_FILE}": text_encoder_file,
    }
    for relative in placed:
        server.remove(relative)
    try:
        yield
    finally:
        for relative, source in placed.items():
            server.link(relative, source)


# -- the example clip -----------------------------------------------------------------------------------------


def test_the_shipped_clip_is_the_synthesized_one() -> None:
    import av  # a ComfyUI requirement; Load Audio decodes with it too

    with av.open(str(CLIP)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("flac", SAMPLE_RATE, 2)
        samples = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    pcm = samples.reshape(-1, 2).T  # packed s16: channels interleaved
    np.testing.assert_array_equal(pcm, synthesize())
    assert pcm.shape == (2, int(SECONDS * SAMPLE_RATE)) and np.abs(pcm).max() > 10_000
    assert CLIP.stat().st_size < 300_000


def test_the_pack_copies_the_clip_into_input_for_load_audio(sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    assert (sa3_server.input_dir / SA3_EXAMPLE_CLIP).read_bytes() == CLIP.read_bytes()
    assert SA3_EXAMPLE_CLIP in comfy.object_info("LoadAudio")["LoadAudio"]["input"]["required"]["audio"][0]
    loaded = [
        node["widgets_values"][0]
        for name in NAMES
        for node in ui_workflow(name)["nodes"]
        if node["type"] == "LoadAudio"
    ]
    assert loaded == [SA3_EXAMPLE_CLIP] * 3  # audio-to-audio, continuation, inpainting


# -- download hints and the missing-models dialog ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_loader_hints_where_to_download_its_files(name: str, sa3_server: ComfyServer, comfy: ComfyClient) -> None:
    folders = {folder["name"] for folder in comfy.get("/api/experiment/models").json()}
    (loader,) = [node for node in ui_workflow(name)["nodes"] if node["type"] == "SA3_ModelLoader"]
    hints = loader["properties"]["models"]
    assert {hint["name"]: hint["directory"] for hint in hints} == HINTED
    for hint in hints:
        assert hint["name"] in loader["widgets_values"]  # the frontend only checks hints a widget names
        assert hint["url"] == f"{COMFY_ORG}/{hint['directory']}/{hint['name']}"
        assert hint["directory"] in folders


def test_missing_models_dialog_offers_the_hinted_files(
    sa3_server: ComfyServer, sa3_tiny_single_files: tuple[Path, Path], window: ComfyFrontend
) -> None:
    with models_absent(sa3_server, sa3_tiny_single_files):
        for name in NAMES:
            window.open()  # a fresh page: the frontend caches model folder listings
            window.drop_workflow(ui_workflow(name), f"{name}.json")
            dialog = missing_models_dialog(window)
            dialog.wait_for()
            text = dialog.inner_text()
            for file_name, folder in HINTED.items():
                assert f"{folder} / {file_name}" in text, (name, text)
            assert "not allowed" not in text and "Invalid directory" not in text, (name, text)
            assert text.count("Download") == len(HINTED)
    window.open()


# -- every template, dropped and run -------------------------------------------------------------------------


def assert_fits_the_window(view: dict[str, Any]) -> None:
    assert view["scale"] >= view["minScale"], view["scale"]  # readable: nodes drawn with their text
    left, top, right, bottom = view["panel"]
    for title, x0, y0, x1, y1 in view["nodes"]:
        assert left <= x0 and x1 <= right and top <= y0 and y1 <= bottom, (title, (x0, y0, x1, y1), view["panel"])
        if view["minimap"] is not None:
            m0, n0, m1, n1 = view["minimap"]
            assert x1 <= m0 or x0 >= m1 or y1 <= n0 or y0 >= n1, (title, "under the minimap")


def drop_with_its_models_present(window: ComfyFrontend, comfy: ComfyClient, name: str) -> None:
    """Drop a template on a fresh page; no missing-models dialog may appear, the hinted files being present.

    Under a heavy machine load the frontend (1.32.9) now and then reports a present file as missing (one or two
    of the 18 drops of a full test run, never when this file runs alone; each time the text encoder's file,
    which the server listed). When that happens,
    the server must list the file (so the dialog was the frontend's race, not our hint or folder), and the next
    drop on a fresh page must show no dialog."""
    for _ in range(2):
        window.open()
        window.drop_workflow(ui_workflow(name), f"{name}.json")
        window.page.wait_for_timeout(500)  # the frontend fits the view on the next animation frame
        dialog = missing_models_dialog(window)
        if dialog.count() == 0:
            return
        text = dialog.inner_text()
        for file_name, folder in HINTED.items():
            listed = [m["name"] for m in comfy.get(f"/api/experiment/models/{folder}").json()]
            assert file_name in listed, (text, folder, listed)
    raise AssertionError(f"missing-models dialog on both drops: {text}")


@pytest.mark.parametrize("name", NAMES)
def test_dropped_template_fits_runs_and_shows_its_spectrograms(
    name: str, sa3_server: ComfyServer, comfy: ComfyClient, window: ComfyFrontend
) -> None:
    drop_with_its_models_present(window, comfy, name)
    assert_fits_the_window(window.page.evaluate(_VIEW))

    reset_cache(comfy)
    prompt_id = window.queue()
    with frozen(window):
        result = comfy.wait_for(prompt_id, timeout_s=300)
    assert result.ok, result.messages

    count = BATCH.get(name, 1)
    previews = window.wait_for_previews()  # the canvas shows every picture of every preview
    assert len(previews) == (2 if name == "sa3_inpainting" else 1)  # inpainting also shows its input clip
    for preview in previews:
        assert len(preview["outputs"]) == preview["shown"] == count
        for ref in preview["outputs"]:
            picture = Image.open(io.BytesIO(comfy.view(ref)))
            assert picture.size == SPECTROGRAM_SIZE
            colours = np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)
            assert len(colours) > 50  # a coloured plot, not a blank frame


# -- the template browser -------------------------------------------------------------------------------------


def test_template_browser_shows_a_thumbnail_for_each_template(
    sa3_server: ComfyServer, comfy: ComfyClient, window: ComfyFrontend
) -> None:
    for name in NAMES:
        thumbnail = Image.open(io.BytesIO(comfy.get(f"/api/workflow_templates/{PACK_FOLDER}/{name}.jpg").content))
        assert thumbnail.format == "JPEG" and thumbnail.size == (512, 512)  # the browser's cards are square

    window.open()
    prefix = f"/api/workflow_templates/{PACK_FOLDER}/"
    served: list[str] = []
    window.page.on("response", lambda r: prefix in r.url and r.ok and served.append(r.url.split(prefix)[1]))
    window.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    window.page.get_by_text(PACK_FOLDER, exact=True).first.click()  # the pack's category, under Extensions
    # The cards show the fetched thumbnails (as blob: URLs): six loaded 512-px pictures in the dialog.
    window.page.wait_for_function(
        """(count) => [...document.querySelectorAll(".p-dialog img")]
               .filter(img => img.complete && img.naturalWidth === 512).length === count""",
        arg=len(NAMES),
    )
    assert sorted(name.split("?")[0] for name in served if name.split("?")[0].endswith(".jpg")) == [
        f"{name}.jpg" for name in NAMES
    ]
    window.page.keyboard.press("Escape")
