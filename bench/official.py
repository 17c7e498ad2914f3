"""This pack's StableAudioModel against the official ``stable_audio_3`` code: same weights, same request.

    python -m bench.official --official /path/to/stable-audio-3 [--variant small] [--seconds 30 120] [--rounds 2]
    python -m bench.official --official ... --seconds 10 --cfg 7       # guidance with a negative prompt
    python -m bench.official --official ... --device cuda               # fp16 on the GPU (the official model_half)

``--official`` is a checkout of github.com/Stability-AI/stable-audio-3 (MIT); its ``stable_audio_3`` package
is imported from there (nothing of it is in this repository). It needs its own extra dependencies
(``pip install einops-exts soundfile tqdm``); without flash-attn it runs its CPU path.

Both models get the same random weights at the real small-music or medium shapes: ours is built by
``bench/random_model.py``, then written in the official on-disk layout (``model_config.json`` from
``../shared/fixtures/real_shapes``, ``model.safetensors``, the real-size random T5Gemma encoder saved as a
transformers folder) and loaded with the official ``load_diffusion_cond``. Each round runs the official
``generate`` and ours on the same request and seed, one after the other, and reports the wall time of
each, split into text conditioning, sampling and decode (the official stages are timed by wrapping its
conditioner and its SAME decode), and the relative L2 difference of the two outputs.

On CUDA both run in float16 by default, the official CUDA default (``model_half=True``; ours: the
sa3_core.precision default), or fp32 with ``--fp32``; the timers synchronise the device. Whole runs in fp16
at random real-shape weights decorrelate (the sampler amplifies rounding), so the output difference there
says little; ``bench/precision_error.py`` compares per stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from sa3_core.attention import flash_available
from sa3_core.checkpoint import AUTOENCODER_PREFIX, CONDITIONER_PREFIX, DIT_PREFIX

from .measure import load_average, machine_summary, relative_l2
from .random_model import random_model
from .t2a import PROMPT

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


CONFIGS = {"small": "small-music_model_config.reconstructed.json", "medium": "medium_model_config.reconstructed.json"}


def write_official_folder(model, variant: str, folder: Path, fixtures: Path = FIXTURES) -> dict:
    """``model`` in the official layout; returns the model config (its T5Gemma pointing at ``folder``)."""
    config = json.loads((fixtures / "real_shapes" / CONFIGS[variant]).read_text())
    for conditioner in config["model"]["conditioning"]["configs"]:
        if conditioner["type"] == "t5gemma":
            conditioner["config"]["repo_id"] = str(folder)  # a local folder: transformers loads it offline
    (folder / "model_config.json").write_text(json.dumps(config, indent=1))
    tensors = {}
    for prefix, module in (
        (DIT_PREFIX, model.dit),
        (AUTOENCODER_PREFIX, model.autoencoder),
        (CONDITIONER_PREFIX, model.conditioners),
    ):
        tensors.update({prefix + key: value.contiguous() for key, value in module.state_dict().items()})
    save_file(tensors, str(folder / "model.safetensors"))
    text_folder = folder / "t5gemma-b-b-ul2"
    model.text_encoder.model.save_pretrained(text_folder)
    model.text_encoder.tokenizer.save_pretrained(text_folder)
    return config


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StageClock:
    """Wall time spent inside wrapped callables, per stage name (the device synchronised around them)."""

    def __init__(self, device: str = "cpu"):
        self.seconds: dict[str, float] = {}
        self.device = device

    def wrap(self, owner, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        setattr(owner, attribute, timed)


def timed_generate(generate, clock: StageClock, request: dict) -> tuple[dict[str, float], torch.Tensor]:
    clock.seconds.clear()
    synchronize(clock.device)
    start = time.perf_counter()
    audio = generate(**request)
    synchronize(clock.device)
    total = time.perf_counter() - start
    text, decode = clock.seconds.get("text", 0.0), clock.seconds.get("decode", 0.0)
    return {"text": text, "sampling": total - text - decode, "decode": decode, "total": total}, audio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, type=Path, help="checkout of Stability-AI/stable-audio-3")
    parser.add_argument("--variant", choices=tuple(CONFIGS), default="small")
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0])
    parser.add_argument("--cfg", type=float, default=1.0, help="cfg_scale; above 1 with an empty negative prompt")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp32", action="store_true", help="on CUDA: fp32 instead of the fp16 defaults")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="the golden fixtures folder (real_shapes/)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.official.resolve()))
    from stable_audio_3.loading_utils import load_diffusion_cond
    from stable_audio_3.model import StableAudioModel as OfficialModel

    device = args.device
    half = device.startswith("cuda") and not args.fp32
    dtype = torch.float16 if half else torch.float32
    print(f"machine: {machine_summary()}")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # both sides alike
        print(
            f"device: {torch.cuda.get_device_name()}, {'fp16' if half else 'fp32'}, flash-attn "
            f"{'present' if flash_available() else 'absent'}"
        )
    ours = random_model(args.variant, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_official_folder(ours, args.variant, Path(tmp), args.fixtures)
        network = load_diffusion_cond(config, str(Path(tmp) / "model.safetensors"), device=device, model_half=half)
        official = OfficialModel(network, config, device, half)

    ours_clock, official_clock = StageClock(device), StageClock(device)
    official_clock.wrap(network.conditioner, "forward", "text")
    official_clock.wrap(network.pretransform, "decode", "decode")
    ours_clock.wrap(ours, "encode_prompts", "text")
    ours_clock.wrap(ours, "decode_latents", "decode")
    for seconds in args.seconds:
        compare(official, ours, official_clock, ours_clock, args, seconds, "fp16" if half else "fp32")
    return 0


def compare(
    official, ours, official_clock: StageClock, ours_clock: StageClock, args, seconds: float, precision: str
) -> None:
    request = dict(prompt=PROMPT, duration=seconds, steps=args.steps, cfg_scale=args.cfg)
    if args.cfg != 1:
        request["negative_prompt"] = ""
    print(
        f"\n{args.variant}, {seconds:g} s, {args.steps} steps, cfg {args.cfg:g}, {precision}, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )

    def run_official(seed):
        return timed_generate(official.generate, official_clock, dict(request, seed=seed))

    def run_ours(seed):
        ours.text_encoder.clear_cache()  # the official code has no prompt cache: encode every time here too
        return timed_generate(ours.generate, ours_clock, dict(request, seed=seed))

    with torch.inference_mode():
        run_official(0), run_ours(0)  # warm-up
        rows = []
        for r in range(args.rounds):
            official_times, official_audio = run_official(r + 1)
            our_times, our_audio = run_ours(r + 1)
            rel = relative_l2(our_audio, official_audio)
            rows.append((official_times, our_times))
            print(
                f"  round {r + 1}: official {official_times['total']:.2f} s, ours {our_times['total']:.2f} s "
                f"(ours/official {our_times['total'] / official_times['total']:.3f}); outputs rel L2 {rel:.1e}; "
                f"load {load_average():.1f}",
                flush=True,
            )

    print(f"\n| {args.variant}, {seconds:g} s | official (median s) | ours (median s) | ours / official |")
    print("|---|---|---|---|")
    for stage in ("text", "sampling", "decode", "total"):
        a = statistics.median(row[0][stage] for row in rows)
        b = statistics.median(row[1][stage] for row in rows)
        print(f"| {stage} | {a:.2f} | {b:.2f} | {b / a:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
