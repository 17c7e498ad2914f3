"""Command line: ``python -m sa3_core generate ...`` (every generation mode) and ``python -m sa3_core tiny ...``.

Examples::

    python -m sa3_core generate --model models/stable-audio-3-small-music --prompt "warm techno" --duration 30 --out techno.wav
    python -m sa3_core generate --model M --prompt "jazz" --init-audio in.wav --init-noise-level 0.6 --out var.wav
    python -m sa3_core generate --model M --prompt "drums" --inpaint-audio loop.wav --region 0.5:1.0 --region 2.5:3.5 --duration 4 --out fix.wav
    python -m sa3_core generate --model M --prompt "house" --continue-from intro.wav --duration 30 --out longer.wav
    python -m sa3_core generate --model M --prompt "a" --prompt "b" --duration 10 --duration 5 --batch-size 2 --out batch.wav
    python -m sa3_core generate --model M --prompt "bass" --lora style.safetensors:0.8 --lora other.safetensors:0.5:dit --out l.wav
    python -m sa3_core tiny --out /tmp/tiny-sa3 --variant small      # a labelled random-weight checkpoint for tests
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .masks import PEAK_POLICIES, continuation_region
from .sampling import SAMPLERS
from .wav import read_wav, write_wav

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHT_DTYPES = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def _region(text: str) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"region {text!r}: expected START:END in seconds, e.g. 0.5:1.25") from None
    return start, end


def _lora(text: str) -> tuple[str, float, str | None]:
    """``FILE[:STRENGTH[:TARGET]]``; a Windows drive letter is not split off."""
    parts = text.rsplit(":", 2)
    target = None
    if len(parts) == 3 and parts[2] in ("dit", "conditioner"):
        path, strength, target = parts
    elif len(parts) >= 2 and _is_number(parts[-1]):
        path, strength = ":".join(parts[:-1]), parts[-1]
    else:
        path, strength = text, "1"
    return path, float(strength), target


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sa3_core", description="Stable Audio 3 generation")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate audio (text-to-audio, audio-to-audio, inpainting, continuation)")
    gen.add_argument("--model", required=True, help="official model folder, or a Comfy-Org single .safetensors file")
    gen.add_argument("--text-encoder", help="T5Gemma folder or file (needed with a single-file model)")
    gen.add_argument("--base", action="store_true", help="a single-file -base model (rectified flow, Euler, 50 steps)")
    gen.add_argument("--prompt", action="append", required=True, help="repeat once per batch item for per-item prompts")
    gen.add_argument("--negative-prompt", action="append", help="repeat once per batch item, or give once for all")
    gen.add_argument("--duration", action="append", type=float, help="seconds (default 30); repeat per item")
    gen.add_argument("--batch-size", type=int, default=None, help="default: the number of prompts")
    gen.add_argument("--steps", type=int, help="default 8 (post-trained) / 50 (base)")
    gen.add_argument("--cfg-scale", type=float, help="default 1 (post-trained, no guidance) / 7 (base)")
    gen.add_argument("--apg-scale", type=float, default=1.0, help="1 = APG (default), 0 = plain CFG")
    gen.add_argument("--sampler", choices=SAMPLERS, help="default: pingpong (post-trained) / euler (base)")
    gen.add_argument("--seed", type=int, default=-1, help="-1 draws one and prints it")
    gen.add_argument("--init-audio", type=Path, help="WAV to vary (audio-to-audio)")
    gen.add_argument("--init-noise-level", type=float, default=1.0, help="0..1: how much of the init audio is replaced")
    gen.add_argument("--inpaint-audio", type=Path, help="WAV whose --region spans are regenerated")
    gen.add_argument("--region", action="append", type=_region, help="START:END seconds to regenerate; repeatable")
    gen.add_argument("--continue-from", type=Path, help="WAV to continue up to --duration")
    gen.add_argument("--lora", action="append", type=_lora, default=[], help="FILE[:STRENGTH[:dit|conditioner]]; repeatable, in order")
    gen.add_argument("--no-chunked-decode", action="store_true", help="decode in one pass (more memory)")
    gen.add_argument("--peak", choices=PEAK_POLICIES, default="clamp", help="clamp (official), limit (never clips), none")
    gen.add_argument("--device", help="cuda, mps or cpu (default: the first available)")
    gen.add_argument("--dtype", choices=sorted(DTYPES),
                     help="compute dtype; default float16 on CUDA, float32 on MPS, on CPU bfloat16 where it is "
                          "measured much faster than float32, else float32")
    gen.add_argument("--autoencoder-dtype", choices=sorted(DTYPES), help="SAME's dtype (default: see --dtype)")
    gen.add_argument("--weights", choices=sorted(WEIGHT_DTYPES),
                     help="store the DiT's and text encoder's weight matrices in float8 (less memory)")
    gen.add_argument("--attention", default="auto", choices=("auto", "sdpa", "band", "flash"))
    gen.add_argument("--float32-wav", action="store_true", help="write 32-bit float WAV instead of 16-bit PCM")
    gen.add_argument("--out", type=Path, required=True, help="output .wav (batch items get _1, _2, ... suffixes)")

    tiny = commands.add_parser("tiny", help="write a tiny random-weight checkpoint (official layout) for tests and demos")
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--variant", choices=("small", "medium"), default="small")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _progress(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    print(f"\rsampling step {step + 1}/{total}", end="" if step + 1 < total else "\n", file=sys.stderr, flush=True)


def generate(args: argparse.Namespace) -> list[Path]:
    from .pipeline import StableAudioModel  # imported late: `tiny` and --help stay fast

    batch_size = args.batch_size or len(args.prompt)
    prompts = args.prompt[0] if len(args.prompt) == 1 else args.prompt
    negatives = None
    if args.negative_prompt:
        negatives = args.negative_prompt[0] if len(args.negative_prompt) == 1 else args.negative_prompt
    durations = args.duration or [30.0]
    duration = durations[0] if len(durations) == 1 else durations
    kwargs: dict = {}
    if args.init_audio:
        kwargs.update(init_audio=read_wav(args.init_audio), init_noise_level=args.init_noise_level)
    if args.continue_from and args.inpaint_audio:
        raise ValueError("--continue-from and --inpaint-audio exclude each other")
    if args.continue_from:
        rate, audio = read_wav(args.continue_from)
        longest = max(durations)
        region = continuation_region(audio.shape[-1] / rate, longest)
        kwargs.update(inpaint_audio=(rate, audio), inpaint_mask_start_seconds=region[0], inpaint_mask_end_seconds=region[1])
    if args.inpaint_audio:
        if not args.region:
            raise ValueError("--inpaint-audio needs at least one --region START:END")
        kwargs.update(inpaint_audio=read_wav(args.inpaint_audio),
                      inpaint_mask_start_seconds=[r[0] for r in args.region],
                      inpaint_mask_end_seconds=[r[1] for r in args.region])
    elif args.region:
        raise ValueError("--region needs --inpaint-audio")

    started = time.perf_counter()
    model = StableAudioModel.from_pretrained(args.model, device=args.device, dtype=DTYPES.get(args.dtype),
                                             text_encoder_path=args.text_encoder, attention_backend=args.attention,
                                             base=args.base, autoencoder_dtype=DTYPES.get(args.autoencoder_dtype),
                                             weight_dtype=WEIGHT_DTYPES.get(args.weights))
    if args.lora:
        model.load_lora([path for path, _, _ in args.lora])
        for index, (_, strength, target) in enumerate(args.lora):
            model.set_lora_strength(strength, lora_index=index, target=target)
    print(f"loaded {args.model} in {time.perf_counter() - started:.1f} s on {model.device} ({model.dtype})", file=sys.stderr)

    started = time.perf_counter()
    output = model.generate(prompt=prompts, negative_prompt=negatives, duration=duration, batch_size=batch_size,
                            steps=args.steps, cfg_scale=args.cfg_scale, apg_scale=args.apg_scale, sampler_type=args.sampler,
                            seed=args.seed, chunked_decode=False if args.no_chunked_decode else None, peak=args.peak,
                            callback=_progress, **kwargs)
    items = list(output)  # a (B, 2, T) tensor, or one tensor per item when durations differ
    print(f"generated {batch_size} x {max(durations):g} s in {time.perf_counter() - started:.1f} s, seed {model.last_seed}",
          file=sys.stderr)
    outputs = []
    for index, item in enumerate(items):
        path = args.out if len(items) == 1 else args.out.with_name(f"{args.out.stem}_{index + 1}{args.out.suffix}")
        outputs.append(write_wav(path, item, model.sample_rate, float32=args.float32_wav))
        print(path)
    return outputs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tiny":
            from .tiny import write_tiny_checkpoint

            print(write_tiny_checkpoint(args.out, args.variant, args.seed))
        else:
            generate(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
