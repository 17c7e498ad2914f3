"""The real ComfyUI frontend (comfyui-frontend-package, served by the server) in headless Chromium.

We use Debian's /usr/bin/chromium through Playwright; `playwright install` (which downloads browsers) is never
needed. Every request that does not go to the local server is aborted, so the page works offline and cannot
leak anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]

# The app is usable once `window.app` has its graph and extension manager AND the loading mask is gone: before
# that, the default workflow is still loading and would overwrite a workflow we load.
_APP_READY = "() => !!(window.app && window.app.extensionManager && window.app.graph)"
_LOADING_MASK = ".p-blockui-mask"

# Per Preview Image node: its last output's pictures and how many of them the canvas has loaded.
_PREVIEWS = """() => window.app.graph.nodes.filter(n => n.type === "PreviewImage").map(n => ({
    id: n.id,
    outputs: window.app.nodeOutputs[String(n.id)]?.images ?? [],
    shown: (n.imgs ?? []).filter(img => img.complete && img.naturalWidth > 0).length,
}))"""
_RELOAD_ABANDONED_PREVIEWS = """() => {
    for (const n of window.app.graph.nodes)
        if (n.type === "PreviewImage" && !n.isLoading && n.images?.length && !n.imgs?.length) n.images = undefined;
    window.app.graph.setDirtyCanvas(true, true);
}"""


class ComfyFrontend:
    """One browser page on the ComfyUI frontend.

    with ComfyFrontend(server.url) as ui:
        ui.load_workflow(json.loads(path.read_text()))
        api_graph = ui.graph_to_prompt()
        prompt_id = ui.queue()
    """

    def __init__(
        self, url: str, *, timeout_s: float = 60.0, chromium: Path = CHROMIUM, viewport: tuple[int, int] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_ms = timeout_s * 1000
        self.chromium = chromium
        self.viewport = viewport  # (width, height) of the window; None: Playwright's default (1280 x 720)
        self.console_errors: list[str] = []
        self._playwright: Any = None
        self._browser: Any = None
        self.page: Any = None

    def __enter__(self) -> ComfyFrontend:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=str(self.chromium), headless=True, args=CHROMIUM_ARGS
            )
            size = {"viewport": {"width": self.viewport[0], "height": self.viewport[1]}} if self.viewport else {}
            context = self._browser.new_context(**size)
            context.set_default_timeout(self.timeout_ms)
            context.route("**/*", self._only_local_server)
            self.page = context.new_page()
            self.page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
            self.page.on("pageerror", lambda exc: self.console_errors.append(str(exc)))
            self.open()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()

    def _only_local_server(self, route: Any) -> None:
        if route.request.url.startswith(self.url):
            route.continue_()
        else:
            route.abort()

    def open(self) -> None:
        """(Re)load the page and wait until the app is ready for a workflow."""
        self.page.goto(self.url)
        self.page.wait_for_function(_APP_READY)
        self.page.wait_for_selector(_LOADING_MASK, state="hidden")

    def node_types(self) -> list[str]:
        """Node types the frontend knows (from /object_info, as registered in LiteGraph)."""
        return self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")

    def missing_node_types(self, ui_workflow: dict[str, Any]) -> set[str]:
        """Node types a UI workflow uses that the frontend does not know (the "missing nodes" dialog)."""
        return {node["type"] for node in ui_workflow["nodes"]} - set(self.node_types())

    def load_workflow(self, ui_workflow: dict[str, Any]) -> None:
        """Load a UI-format workflow the way drag-and-drop does (`app.loadGraphData`)."""
        self.page.evaluate("async (workflow) => { await window.app.loadGraphData(workflow); }", ui_workflow)

    def drop_workflow(self, ui_workflow: dict[str, Any], filename: str = "workflow.json") -> None:
        """Drop a workflow file onto the canvas: the user's drag-and-drop path (drop handler -> handleFile ->
        loadGraphData), including its file-type detection."""
        self.page.evaluate("() => window.app.graph.clear()")
        self.page.evaluate(
            """([text, filename]) => {
                const files = new DataTransfer();
                files.items.add(new File([text], filename, {type: "application/json"}));
                document.querySelector("#graph-canvas").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
            }""",
            [json.dumps(ui_workflow), filename],
        )
        # The drop handler reads the file asynchronously; the graph was empty, so a full node count means loaded.
        self.page.wait_for_function("(count) => window.app.graph.nodes.length === count", arg=len(ui_workflow["nodes"]))

    def graph_to_prompt(self) -> dict[str, Any]:
        """The API-format graph the frontend would queue for the current workflow."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def export_workflow(self) -> dict[str, Any]:
        """The current graph as a UI-format workflow, exactly as the frontend saves it."""
        return self.page.evaluate("() => window.app.graph.serialize()")

    def wait_for_previews(self, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Wait until every Preview Image node shows (loaded) all the pictures of its last output; returns per
        node {id, outputs, shown}. The frontend gives up loading a picture after 8 s (one retry) and never tries
        again; on a starved CI machine that happens, so an abandoned load is handed back to the frontend's own
        loader (its draw loop reloads a node whose `images` changed)."""
        deadline = self.page.evaluate("() => performance.now()") + timeout_s * 1000
        while True:
            state = self.page.evaluate(_PREVIEWS)
            if all(node["shown"] == len(node["outputs"]) > 0 for node in state):
                return state
            if self.page.evaluate("() => performance.now()") > deadline:
                raise TimeoutError(f"previews not shown within {timeout_s} s: {state}")
            self.page.evaluate(_RELOAD_ABANDONED_PREVIEWS)
            self.page.wait_for_timeout(1000)

    def queue(self) -> str:
        """Queue the current workflow as the Run button does; returns the prompt id the server assigned."""
        with self.page.expect_response(
            lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST"
        ) as answer:
            self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.QueuePrompt')")
        body = answer.value.json()
        if answer.value.status != 200:
            raise RuntimeError(f"the server rejected the frontend's prompt: {body}")
        return body["prompt_id"]


@contextmanager
def frozen(frontend: ComfyFrontend) -> Iterator[None]:
    """Freeze the page (no script, no rendering) while the server computes: on a 2-core CI machine the idle
    frontend's canvas redraws otherwise take a good share of the CPU the run needs, and a starved page can
    give up loading an early result's preview image (the frontend times the load out and never retries)."""
    cdp = frontend.page.context.new_cdp_session(frontend.page)
    cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    try:
        yield
    finally:
        cdp.send("Page.setWebLifecycleState", {"state": "active"})
        cdp.detach()
