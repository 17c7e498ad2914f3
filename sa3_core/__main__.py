"""Command line: ``sa3`` (= ``python -m sa3_core``), with the official ``stable-audio`` flags and defaults.

Examples (the official ones work as they are, with ``sa3`` for ``stable-audio``)::

    sa3 --model small-music -p "lo-fi hip hop beat, 90 BPM" --duration 30 -o beat.wav
    sa3 -p "bossa nova bassline" --init-audio input.wav --init-noise-level 0.8 -o out.wav
    sa3 -p "punchy kick drum fill" --inpaint-audio input.wav --inpaint-start 4 --inpaint-end 8 -o out.wav
    sa3 -p "dreamy synth outro" --inpaint-audio input.wav --inpaint-start 10 --inpaint-end 30 --duration 30 -o out.wav
    sa3 -p "orchestral strings" --lora-ckpt-path my_lora.safetensors --lora-strength 0.8 -o out.wav
    sa3 -p a b --duration 10 5 -o batch.wav                # batch: batch_0.wav, batch_1.wav
    sa3 --model models/stable-audio-3-small-music -p "house" --continue-from intro.wav --duration 30 -o longer.wav
    sa3 -p "bass" --lora style.safetensors:0.8 --lora other.safetensors:0.5:dit -o l.wav
    sa3 tiny --out /tmp/tiny-sa3 --variant small          # a labelled random-weight checkpoint for tests

``--model`` takes an official name (looked up offline: Hugging Face cache, then ``--models-dir`` /
``$SA3_MODELS_DIR``, see sa3_core.hub), a model folder or a Comfy-Org single file. ``sa3 generate ...`` (the
older spelling) still works.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .hub import MODEL_REPOS, MODELS_DIR_ENV
from .inpaint import continuation_region
from .output import PEAK_POLICIES
from .sampling import SAMPLERS
from .wav import read_wav, write_wav

PROG = "sa3"
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
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Stable Audio 3: text-to-audio, audio-to-audio, inpainting and continuation. "
        f"The flags of the official `stable-audio` CLI, plus extras. `{PROG} tiny -h`: write a tiny test checkpoint.",
    )
    names = ", ".join(MODEL_REPOS)

    model = parser.add_argument_group("model (official flags)")
    model.add_argument(
        "--model",
        default="medium",
        help=f"official name ({names}; default: medium) or a model folder / single .safetensors file",
    )
    model.add_argument("--device", help="cuda / mps / cpu (auto-detected if omitted)")
    model.add_argument("--no-half", action="store_true", help="disable half precision (fp16) on CUDA")

    gen = parser.add_argument_group("generation (official flags)")
    gen.add_argument(
        "-p",
        "--prompt",
        required=True,
        nargs="+",
        action="extend",
        help="text prompt(s); several for per-item prompts (repeating the flag adds more)",
    )
    gen.add_argument(
        "--negative-prompt", nargs="+", action="extend", help="negative prompt(s): one for all or one per item"
    )
    gen.add_argument(
        "--duration",
        type=float,
        nargs="+",
        action="extend",
        help="seconds (default: 120); several for per-item durations",
    )
    gen.add_argument("--steps", type=int, default=8, help="diffusion steps (default: 8; try 50 for -base models)")
    gen.add_argument("--cfg-scale", type=float, default=1.0, help="CFG scale (default: 1.0; try 7.0 for -base models)")
    gen.add_argument("--seed", type=int, default=-1, help="random seed (-1 = random, printed; default: -1)")
    gen.add_argument("--batch-size", type=int, help="default: the number of prompts")
    gen.add_argument(
        "-o",
        "--output",
        "--out",
        default="output.wav",
        help="output .wav (default: output.wav); a batch writes NAME_0.wav, NAME_1.wav, ...",
    )
    gen.add_argument("--init-audio", type=Path, metavar="PATH", help="WAV to vary (audio-to-audio)")
    gen.add_argument(
        "--init-noise-level",
        type=float,
        default=0.9,
        help="0..1: how much of the init audio is replaced (default: 0.9)",
    )
    gen.add_argument("--inpaint-audio", type=Path, metavar="PATH", help="WAV to inpaint or continue")
    gen.add_argument(
        "--inpaint-start",
        type=float,
        action="append",
        dest="inpaint_starts",
        metavar="SECONDS",
        help="start of a region to regenerate; repeat for several regions",
    )
    gen.add_argument(
        "--inpaint-end",
        type=float,
        action="append",
        dest="inpaint_ends",
        metavar="SECONDS",
        help="end of a region to regenerate; repeat for several regions",
    )
    decode = gen.add_mutually_exclusive_group()
    decode.add_argument(
        "--chunked-decode",
        action="store_const",
        const=True,
        dest="chunked_decode",
        help="force chunked decoding on (default: the model config's, on for SA3)",
    )
    decode.add_argument(
        "--no-chunked-decode",
        action="store_const",
        const=False,
        dest="chunked_decode",
        help="force chunked decoding off (one pass, more memory)",
    )
    gen.add_argument(
        "--lora-ckpt-path",
        action="append",
        dest="loras",
        default=[],
        metavar="PATH",
        help="LoRA .safetensors file; repeat to stack several",
    )
    gen.add_argument("--lora-strength", type=float, help="LoRA strength (every LoRA, or the one --lora-index names)")
    gen.add_argument("--lora-index", type=int, help="the LoRA --lora-strength applies to")

    extra = parser.add_argument_group("extras (not in the official CLI)")
    extra.add_argument(
        "--models-dir",
        type=Path,
        help=f"folder searched for named models after the Hugging Face cache (also ${MODELS_DIR_ENV})",
    )
    extra.add_argument("--text-encoder", help="T5Gemma folder or file (needed with a single-file model)")
    extra.add_argument("--base", action="store_true", help="a single-file -base model (rectified flow, Euler)")
    extra.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="compute dtype, overrides --no-half (default: float16 on CUDA, float32 on MPS; on CPU "
        "bfloat16 where it is measured much faster than float32, else float32)",
    )
    extra.add_argument("--autoencoder-dtype", choices=sorted(DTYPES), help="SAME's dtype (default: see --dtype)")
    extra.add_argument(
        "--weights",
        choices=sorted(WEIGHT_DTYPES),
        help="store the DiT's and text encoder's weight matrices in float8 (less memory)",
    )
    extra.add_argument("--sampler", choices=SAMPLERS, help="default: pingpong (post-trained) / euler (base)")
    extra.add_argument("--apg-scale", type=float, default=1.0, help="1 = APG (default), 0 = plain CFG")
    extra.add_argument(
        "--region",
        action="append",
        type=_region,
        default=[],
        metavar="START:END",
        help="a region to regenerate, as --inpaint-start START --inpaint-end END",
    )
    extra.add_argument("--continue-from", type=Path, metavar="PATH", help="WAV to continue up to --duration")
    extra.add_argument(
        "--lora",
        action="append",
        type=_lora,
        default=[],
        metavar="FILE[:STRENGTH[:dit|conditioner]]",
        help="a LoRA with its own strength (and target); repeatable, stacked after --lora-ckpt-path",
    )
    extra.add_argument(
        "--peak", choices=PEAK_POLICIES, default="clamp", help="clamp (official), limit (never clips), none"
    )
    extra.add_argument("--attention", default="auto", choices=("auto", "sdpa", "band", "flash"))
    extra.add_argument("--float32-wav", action="store_true", help="write 32-bit float WAV instead of 16-bit PCM")
    return parser


def build_tiny_parser() -> argparse.ArgumentParser:
    tiny = argparse.ArgumentParser(
        prog=f"{PROG} tiny", description="write a tiny random-weight checkpoint (official layout) for tests and demos"
    )
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--variant", choices=("small", "medium"), default="small")
    tiny.add_argument("--seed", type=int, default=0)
    return tiny


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The official CLI's checks (each a usage error), and ours for the extra flags; fills the batch size,
    the regions and the default duration in ``args``."""
    starts, ends = args.inpaint_starts, args.inpaint_ends
    if (starts is None) != (ends is None):
        parser.error("--inpaint-start and --inpaint-end must both be provided together")
    if starts and len(starts) != len(ends):
        parser.error("--inpaint-start and --inpaint-end must be specified the same number of times")
    args.regions = list(zip(starts or [], ends or [])) + args.region
    if args.regions and not args.inpaint_audio:
        parser.error("--inpaint-start/--inpaint-end require --inpaint-audio")
    if args.inpaint_audio and not args.regions:
        parser.error("--inpaint-audio requires --inpaint-start and --inpaint-end")
    if args.continue_from and args.inpaint_audio:
        parser.error("--continue-from and --inpaint-audio exclude each other")

    prompts = len(args.prompt)
    if args.batch_size is None:
        args.batch_size = prompts
    elif prompts > 1 and args.batch_size != prompts:
        parser.error(
            f"--batch-size {args.batch_size} does not match the number of prompts ({prompts}); "
            "omit --batch-size to have it inferred automatically"
        )
    if args.negative_prompt and len(args.negative_prompt) > 1 and len(args.negative_prompt) != args.batch_size:
        parser.error(f"Got {len(args.negative_prompt)} --negative-prompt values but batch size is {args.batch_size}")
    args.duration = args.duration or [120.0]
    if len(args.duration) > 1 and len(args.duration) != args.batch_size:
        parser.error(f"Got {len(args.duration)} --duration values but batch size is {args.batch_size}")
    if Path(args.output).suffix.lower() not in ("", ".wav"):
        parser.error(f"-o {args.output}: only WAV files are written (use a .wav name)")


def output_paths(output: str, batch_size: int) -> list[Path]:
    """The official naming: ``output`` (".wav" added when it has no extension), or ``NAME_i.wav`` per item."""
    path = Path(output)
    if not path.suffix:
        path = path.with_name(path.name + ".wav")
    if batch_size == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(batch_size)]


def _one_or_list(values: list):
    return values[0] if len(values) == 1 else values


def _progress(step: int, total: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    print(f"\rsampling step {step + 1}/{total}", end="" if step + 1 < total else "\n", file=sys.stderr, flush=True)


def generate(args: argparse.Namespace) -> list[Path]:
    from .pipeline import StableAudioModel  # imported late: `tiny` and --help stay fast

    init_audio = read_wav(args.init_audio) if args.init_audio else None
    inpaint_audio, starts, ends = None, None, None
    if args.continue_from:
        rate, audio = inpaint_audio = read_wav(args.continue_from)
        starts, ends = continuation_region(audio.shape[-1] / rate, max(args.duration))
    if args.inpaint_audio:
        inpaint_audio = read_wav(args.inpaint_audio)
        starts, ends = _one_or_list([s for s, _ in args.regions]), _one_or_list([e for _, e in args.regions])

    started = time.perf_counter()
    print(f"Loading model '{args.model}'…", file=sys.stderr)
    model = StableAudioModel.from_pretrained(
        args.model,
        device=args.device,
        model_half=not args.no_half,
        dtype=DTYPES.get(args.dtype),
        models_dir=args.models_dir,
        text_encoder_path=args.text_encoder,
        attention_backend=args.attention,
        base=args.base,
        autoencoder_dtype=DTYPES.get(args.autoencoder_dtype),
        weight_dtype=WEIGHT_DTYPES.get(args.weights),
    )
    loras = args.loras + [path for path, _, _ in args.lora]
    if loras:
        model.load_lora(loras)
        for index, (_, strength, target) in enumerate(args.lora, start=len(args.loras)):
            model.set_lora_strength(strength, lora_index=index, target=target)
    if args.lora_strength is not None:
        model.set_lora_strength(args.lora_strength, lora_index=args.lora_index)
    print(
        f"loaded {args.model} in {time.perf_counter() - started:.1f} s on {model.device} ({model.dtype})",
        file=sys.stderr,
    )

    started = time.perf_counter()
    output = model.generate(
        prompt=_one_or_list(args.prompt),
        negative_prompt=_one_or_list(args.negative_prompt) if args.negative_prompt else None,
        duration=_one_or_list(args.duration),
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        batch_size=args.batch_size,
        init_audio=init_audio,
        init_noise_level=args.init_noise_level,
        inpaint_audio=inpaint_audio,
        inpaint_mask_start_seconds=starts,
        inpaint_mask_end_seconds=ends,
        chunked_decode=args.chunked_decode,
        apg_scale=args.apg_scale,
        sampler_type=args.sampler,
        peak=args.peak,
        callback=_progress,
    )
    print(
        f"generated {args.batch_size} x {max(args.duration):g} s in {time.perf_counter() - started:.1f} s, "
        f"seed {model.last_seed}",
        file=sys.stderr,
    )
    paths = output_paths(args.output, args.batch_size)
    for path, item in zip(paths, output):  # a (B, 2, T) tensor, or one tensor per item when durations differ
        write_wav(path, item, model.sample_rate, float32=args.float32_wav)
        print(f"Saved: {path}")
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["tiny"]:
            args = build_tiny_parser().parse_args(argv[1:])
            from .tiny import write_tiny_checkpoint

            print(write_tiny_checkpoint(args.out, args.variant, args.seed))
            return 0
        parser = build_parser()
        args = parser.parse_args(argv[1:] if argv[:1] == ["generate"] else argv)
        check_args(parser, args)
        generate(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
