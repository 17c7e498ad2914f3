"""Developer tool (not a test): regenerate workflows/*.json (UI format) from workflows/api/*.json.

The API-format graphs are the hand-written source of truth. This script loads each one into the real
frontend (`app.loadApiJson`, what dropping an API file does), lays the graph out in the columns of `COLUMNS`,
adds a Note, gives the loader its download hints (`properties.models`, read by the frontend's missing-models
dialog) and saves `app.graph.serialize()` - so the UI files are exactly what the frontend itself writes. The
saved view (`extra.ds`) is dropped: the frontend then fits the whole graph into the window on load. The e2e
tests check that the frontend turns each UI file back into its API graph.

    python tests/e2e/make_ui_workflows.py          # needs the e2e dependencies (.ci/run installs them)
    python tests/e2e/make_screenshots.py           # then: the thumbnails and docs/ screenshots
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

from conftest import PACK_FOLDER, REPO_ROOT, _cache_dir

from comfy_host import ComfyServer, prepare_comfy_tree
from frontend import ComfyFrontend

WORKFLOWS = REPO_ROOT / "workflows"

# Download hints for the files the workflows name: where ComfyUI's missing-models dialog offers to get them.
# The frontend (1.32.9, ComfyUI 0.3.75's) reads a node's properties.models entries {name, url, directory} whose
# name one of the node's widgets holds, looks the name up in /api/experiment/models/<directory> (so directory must
# be a model folder key), and offers a download only from https://huggingface.co/ (or civitai) of .safetensors.
# The Comfy-Org repackage needs no Hugging Face login; the official stabilityai/ repositories do (gated).
# Each file lies in the Comfy-Org repository under the name of the ComfyUI folder it belongs in.
COMFY_ORG = "https://huggingface.co/Comfy-Org/stable-audio-3/resolve/main"
MODEL_FOLDERS = {
    "stable_audio_3_small_music.safetensors": "checkpoints",
    "t5gemma_b_b_ul2.safetensors": "text_encoders",
}
MODEL_HINTS = {name: (f"{COMFY_ORG}/{folder}/{name}", folder) for name, folder in MODEL_FOLDERS.items()}

# The layout: columns left to right, each a list of API node ids stacked top to bottom (the Note goes at the
# bottom of the first column), then the image previews side by side below the columns from FOOTER's first
# column on. Compact enough that the frontend's fit-to-window zoom stays readable (above its level-of-detail
# threshold) in a 1600 x 1000 window.
COLUMNS = {
    "sa3_text_to_audio": [["9", "1"], ["2", "3"], ["4", "5"], ["6", "7"]],
    "sa3_audio_to_audio": [["1", "2"], ["3", "4"], ["5", "6"], ["7", "8", "9"]],
    "sa3_inpainting": [["1", "2", "11"], ["3", "4"], ["5", "6"], ["7", "8", "9"]],
    "sa3_continuation": [["1", "2"], ["3", "4"], ["5", "6"], ["7", "8", "9"]],
    "sa3_batch_prompts": [["1"], ["2", "3"], ["4", "5"], ["6", "7"]],
    "sa3_lora_stack": [["1", "2", "3"], ["4", "5"], ["6", "7"], ["8", "9"]],
}
FOOTER = {
    "sa3_text_to_audio": (2, ["8"]),
    "sa3_audio_to_audio": (2, ["10"]),
    "sa3_inpainting": (1, ["12", "10"]),
    "sa3_continuation": (2, ["10"]),
    "sa3_batch_prompts": (2, ["8"]),
    "sa3_lora_stack": (2, ["10"]),
}
_X0, _Y0, _GAP = 40, 60, 50
# Room for several prompts in the text boxes, for Load Audio's player, and for the spectrogram pictures.
_SIZES = {
    "SA3_TextEncode": [380, 300],
    "SA3_PromptBuilder": [340, 380],
    "LoadAudio": [300, 180],
    "PreviewImage": [460, 230],
}

# A note shown in each workflow (Note nodes live only in the UI; the API graph has none).
_MODELS = (
    "Needs stable_audio_3_small_music.safetensors (models/checkpoints) and t5gemma_b_b_ul2.safetensors "
    "(models/text_encoders): the missing-models dialog offers both. "
)
_DURATION = "The duration is set once, in Text Encode: the Empty Latent follows its conditioning. "
_CLIP = (
    "Load Audio starts with sa3_example_clip.flac (a 4 s clip the pack ships and copies into input/); "
    "upload your own there. "
)
NOTES = {
    "sa3_text_to_audio": "Text to audio. The Prompt Builder writes the prompt in the official prompt guide's "
    "style (tags, then a description); type into Text Encode directly to skip it. " + _MODELS + _DURATION,
    "sa3_audio_to_audio": "Audio to audio. " + _CLIP + "Set Text Encode's duration to the clip's length (longer "
    "pads it with silence, shorter cuts it); noise_level sets how much changes (lower keeps "
    "more of the input). " + _MODELS,
    "sa3_inpainting": "Inpainting: regenerates the regions (seconds) of the clip and keeps the rest; compare the "
    "two spectrograms. Several regions: '0.5-1.0, 2.5-3.5'. " + _CLIP + _MODELS,
    "sa3_continuation": "Continuation: keeps the clip and generates what follows, up to Text Encode's duration. "
    + _CLIP
    + _MODELS,
    "sa3_batch_prompts": "One batch, one prompt per item: prompts are separated by a line '---', per-item durations "
    "are listed in per_item_durations (in Text Encode only: the Empty Latent takes the batch "
    "from the conditioning). Shorter items are padded with silence to the longest. " + _MODELS,
    "sa3_lora_stack": "Two SA3 LoRAs stacked (your own files, from models/loras). Each Apply LoRA adds one; "
    "strength and target apply per LoRA. The loaded model itself is never changed. " + _MODELS,
}

_LOAD_AND_LAYOUT = """async ([api, name, columns, footer, sizes, note, hints]) => {
    await window.app.loadApiJson(api, name);
    const graph = window.app.graph;
    // loadApiJson keeps the API ids as node ids (so graphToPrompt gives the API graph back).
    const byApiId = new Map(Object.keys(api).map(id => [id, graph.getNodeById(Number(id))]));
    for (const node of graph.nodes)
        if (sizes[node.type]) node.size = [...sizes[node.type]];
    const [footerColumn, footerIds] = footer;
    let x = %(x0)d;
    let footerX = x;
    let footerY = %(y0)d;
    let bottomOfFirst = %(y0)d;
    let widthOfFirst = 0;
    columns.forEach((ids, c) => {
        let y = %(y0)d;
        let width = 0;
        for (const id of ids) {
            const node = byApiId.get(id);
            node.pos = [x, y];
            y += node.size[1] + %(gap)d;
            width = Math.max(width, node.size[0]);
        }
        if (c === 0) [bottomOfFirst, widthOfFirst] = [y, width];
        if (c === footerColumn) footerX = x;
        if (c >= footerColumn) footerY = Math.max(footerY, y);
        x += width + %(gap)d;
    });
    for (const id of footerIds) {
        const node = byApiId.get(id);
        node.pos = [footerX, footerY];
        footerX += node.size[0] + %(gap)d;
    }
    // Reproducible examples: the seed stays as saved instead of being re-drawn after each run.
    for (const node of graph.nodes)
        for (const widget of node.widgets ?? [])
            if (widget.name === "control_after_generate") widget.value = "fixed";
    // Download hints on the nodes whose widgets name a hinted file (the missing-models dialog reads them).
    for (const node of graph.nodes) {
        const models = (node.widgets ?? []).filter(w => Object.hasOwn(hints, w.value))
            .map(w => ({name: w.value, url: hints[w.value][0], directory: hints[w.value][1]}));
        if (models.length) node.properties.models = models;
    }
    if (note) {
        const box = window.LiteGraph.createNode("Note");
        box.widgets[0].value = note;
        box.size = [widthOfFirst, 170];
        box.pos = [%(x0)d, bottomOfFirst];
        graph.add(box);
    }
    graph.setDirtyCanvas(true, true);
}""" % {"x0": _X0, "y0": _Y0, "gap": _GAP}  # noqa: UP031 - %-format: the JavaScript is full of braces


def main() -> int:
    sources = sorted((WORKFLOWS / "api").glob("*.json"))
    with tempfile.TemporaryDirectory() as base:
        with ComfyServer(prepare_comfy_tree(_cache_dir()), Path(base), custom_nodes={PACK_FOLDER: REPO_ROOT}) as server:
            with ComfyFrontend(server.url) as ui:
                for source in sources:
                    api = json.loads(source.read_text())
                    columns, footer = COLUMNS[source.stem], FOOTER[source.stem]
                    if sorted([i for column in columns for i in column] + footer[1]) != sorted(api):
                        raise ValueError(f"COLUMNS and FOOTER must place every node of {source.name} once")
                    ui.page.evaluate("() => window.app.graph.clear()")
                    note = NOTES[source.stem].strip() if source.stem in NOTES else None
                    ui.page.evaluate(_LOAD_AND_LAYOUT, [api, source.stem, columns, footer, _SIZES, note, MODEL_HINTS])
                    expected = len(api) + (source.stem in NOTES)
                    # Fails loudly (timeout) rather than saving a half-built graph.
                    ui.page.wait_for_function("(n) => window.app.graph.nodes.length === n", arg=expected)
                    # Through JSON in the page: Playwright would turn `undefined` fields into null, which the
                    # frontend's workflow schema rejects when the file is loaded again.
                    workflow = json.loads(ui.page.evaluate("() => JSON.stringify(window.app.graph.serialize())"))
                    workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"stable-audio-3-nodes/{source.stem}"))
                    workflow.get("extra", {}).pop("ds", None)  # no saved view: the frontend fits the graph on load
                    (WORKFLOWS / source.name).write_text(json.dumps(workflow, indent=2) + "\n")
                    print(f"{source.relative_to(REPO_ROOT)} -> workflows/{source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
