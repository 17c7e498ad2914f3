"""Resident memory of a real ComfyUI server running the pack: idle, after a burst of prompts, after /free.

    python -m bench.server_rss                      # 20 prompts per burst, two bursts, the tiny model
    python -m bench.server_rss --prompts 50 --bursts 3 --seconds 4

Starts ComfyUI 0.3.75 (the e2e tier's tree, tests/e2e/comfy_host.py) with this pack and a tiny random-weight
model, queues each burst at once (every prompt different, so none is served from ComfyUI's cache), waits for
all of them, then POSTs /free (unload models, free memory) and runs one small prompt so the worker applies it.
The server's VmRSS is read from /proc/<pid>/status at each point. A second burst shows whether memory keeps
growing from burst to burst (a leak) or comes back to the same level.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from comfy_host import ComfyClient, ComfyServer, prepare_comfy_tree  # noqa: E402
from sa3_core.tiny import write_tiny_checkpoint  # noqa: E402

MODEL = "tiny-sa3"
BARRIER = {
    "1": {"class_type": "PrimitiveString", "inputs": {"value": "barrier"}},
    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def t2a(seed: int, prompt: str, seconds: float, steps: int) -> dict:
    return {
        "1": {
            "class_type": "SA3_ModelLoader",
            "inputs": {"model": MODEL, "text_encoder": "auto", "dtype": "auto", "attention": "auto"},
        },
        "2": {
            "class_type": "SA3_TextEncode",
            "inputs": {"model": ["1", 0], "prompt": prompt, "negative_prompt": "", "duration": seconds},
        },
        "3": {"class_type": "SA3_EmptyLatent", "inputs": {"model": ["1", 0], "duration": seconds, "batch_size": 1}},
        "4": {
            "class_type": "SA3_RFSampler",
            "inputs": {
                "model": ["1", 0],
                "conditioning": ["2", 0],
                "latent": ["3", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 0.0,
                "apg_scale": 1.0,
                "sampler": "auto",
                "shift": 0.0,
            },
        },
        "5": {
            "class_type": "SA3_VAEDecode",
            "inputs": {"model": ["1", 0], "latent": ["4", 0], "chunked": "auto", "peak": "clamp"},
        },
        "6": {"class_type": "SaveAudio", "inputs": {"audio": ["5", 0], "filename_prefix": "audio/rss"}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20, help="prompts per burst")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio per prompt")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sa3-e2e")
    args = parser.parse_args()

    words = ["piano", "drums", "bass", "synth", "rain", "guitar", "strings", "choir", "wind", "birds"]
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_checkpoint(Path(tmp) / MODEL, "small", seed=0)
        server = ComfyServer(
            prepare_comfy_tree(args.cache), Path(tmp) / "base", custom_nodes={"comfyui-stable-audio-3": REPO}
        )
        with server:
            server.link(f"models/stable_audio_3/{MODEL}", model)
            client = ComfyClient(server.url)
            pid = server.process.pid
            rows = [("idle after start", rss_mib(pid))]
            assert client.run(t2a(0, "piano", args.seconds, args.steps), timeout_s=600).ok
            rows.append(("after one prompt (model loaded)", rss_mib(pid)))
            seed = 1
            for burst in range(1, args.bursts + 1):
                ids = []
                for i in range(args.prompts):
                    ids.append(client.queue_prompt(t2a(seed, f"{words[i % len(words)]} {i}", args.seconds, args.steps)))
                    seed += 1
                results = [client.wait_for(prompt_id, timeout_s=1800) for prompt_id in ids]
                assert all(r.ok for r in results), [r.messages for r in results if not r.ok][:1]
                rows.append((f"after burst {burst} ({args.prompts} prompts)", rss_mib(pid)))
                client.free()
                assert client.run(BARRIER, timeout_s=120).ok  # the worker applies /free before the next prompt
                rows.append((f"after burst {burst} + /free", rss_mib(pid)))
    print(f"ComfyUI server RSS, tiny model, {args.seconds:g} s / {args.steps} steps per prompt\n")
    print("| point | VmRSS (MiB) |\n|---|---:|")
    for label, value in rows:
        print(f"| {label} | {value:.0f} |")


if __name__ == "__main__":
    main()
