"""Developer tool (not a test): regenerate workflows/*.json (UI format) from workflows/api/*.json.

The API-format graphs are the hand-written source of truth. This script loads each one into the real
frontend (`app.loadApiJson`, what dropping an API file does), lays the graph out left to right, and saves
`app.graph.serialize()` - so the UI files are exactly what the frontend itself writes. The e2e tests then
check that the frontend turns each UI file back into its API graph.

    python tests/e2e/make_ui_workflows.py          # needs the e2e dependencies (.ci/run installs them)
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

from comfy_host import ComfyServer, prepare_comfy_tree
from conftest import PACK_FOLDER, REPO_ROOT, _cache_dir
from frontend import ComfyFrontend

WORKFLOWS = REPO_ROOT / "workflows"

# Columns of the layout: a node goes one column right of the furthest node it takes an input from.
_COLUMN_WIDTH = 420
_ROW_GAP = 40

# A note shown in each workflow (Note nodes live only in the UI; the API graph has none).
NOTES = {
    "sa3_text_to_audio": "Text to audio. Put an official Stable Audio 3 model folder (or a Comfy-Org "
                         "stable_audio_3_*.safetensors) in models/stable_audio_3 and pick it in the loader. "
                         "Keep the duration of Text Encode and Empty Latent equal.",
    "sa3_audio_to_audio": "Audio to audio. Pick your clip in Load Audio and set the duration to its length "
                          "(longer pads it with silence, shorter cuts it); noise_level sets how much changes "
                          "(lower keeps more of the input).",
    "sa3_inpainting": "Inpainting: regenerates the regions (seconds) of the clip in Load Audio and keeps the rest. "
                      "Several regions: '0.5-1.0, 2.5-3.5'.",
    "sa3_continuation": "Continuation: keeps the clip in Load Audio and generates what follows, up to the duration.",
    "sa3_batch_prompts": "One batch, one prompt per item: prompts are separated by a line '---', per-item durations "
                         "are listed in per_item_durations. The Empty Latent takes the batch from the conditioning. "
                         "Shorter items are padded with silence to the longest.",
    "sa3_lora_stack": "Two SA3 LoRAs stacked (from models/loras). Each Apply LoRA adds one; strength and target "
                      "apply per LoRA. The loaded model itself is never changed.",
}

_LOAD_AND_LAYOUT = """async ([api, name, note]) => {
    await window.app.loadApiJson(api, name);
    const graph = window.app.graph;
    const byId = new Map(graph.nodes.map(n => [n.id, n]));
    const column = new Map();
    const depth = (node) => {
        if (column.has(node.id)) return column.get(node.id);
        let d = 0;
        for (const input of node.inputs ?? []) {
            if (input.link == null) continue;
            const link = graph.links.get ? graph.links.get(input.link) : graph.links[input.link];
            if (link) d = Math.max(d, depth(byId.get(link.origin_id)) + 1);
        }
        column.set(node.id, d);
        return d;
    };
    // Room for several prompts in the text boxes.
    for (const node of graph.nodes)
        if (node.type === "SA3_TextEncode") node.size = [380, 300];
    const heights = new Map();
    for (const node of [...graph.nodes].sort((a, b) => a.id - b.id)) {
        const c = depth(node);
        const y = heights.get(c) ?? 80;
        node.pos = [60 + c * %(width)d, y];
        heights.set(c, y + node.size[1] + %(gap)d);
    }
    // Reproducible examples: the seed stays as saved instead of being re-drawn after each run.
    for (const node of graph.nodes)
        for (const widget of node.widgets ?? [])
            if (widget.name === "control_after_generate") widget.value = "fixed";
    if (note) {
        const box = window.LiteGraph.createNode("Note");
        box.widgets[0].value = note;
        box.size = [%(width)d - 40, 160];
        box.pos = [60, heights.get(0) ?? 80];
        graph.add(box);
    }
    graph.setDirtyCanvas(true, true);
}""" % {"width": _COLUMN_WIDTH, "gap": _ROW_GAP}


def main() -> int:
    sources = sorted((WORKFLOWS / "api").glob("*.json"))
    with tempfile.TemporaryDirectory() as base:
        with ComfyServer(prepare_comfy_tree(_cache_dir()), Path(base), custom_nodes={PACK_FOLDER: REPO_ROOT}) as server:
            with ComfyFrontend(server.url) as ui:
                for source in sources:
                    api = json.loads(source.read_text())
                    ui.page.evaluate("() => window.app.graph.clear()")
                    ui.page.evaluate(_LOAD_AND_LAYOUT, [api, source.stem, NOTES.get(source.stem)])
                    expected = len(api) + (source.stem in NOTES)
                    # Fails loudly (timeout) rather than saving a half-built graph.
                    ui.page.wait_for_function("(n) => window.app.graph.nodes.length === n", arg=expected)
                    # Through JSON in the page: Playwright would turn `undefined` fields into null, which the
                    # frontend's workflow schema rejects when the file is loaded again.
                    workflow = json.loads(ui.page.evaluate("() => JSON.stringify(window.app.graph.serialize())"))
                    workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"stable-audio-3-nodes/{source.stem}"))
                    (WORKFLOWS / source.name).write_text(json.dumps(workflow, indent=2) + "\n")
                    print(f"{source.relative_to(REPO_ROOT)} -> workflows/{source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
