"""Audit for wasted work in the generation path, with evidence (counts and sizes measured on the real code).

    python -m bench.audit                 # call counts on the tiny fixture model, mask sizes at real shapes
    python -m bench.audit --memory        # + SAME-S decode working memory at 10/30/120 s (real shapes, minutes)

Checks:
  1. cfg 1 runs no unconditional pass (DiT batch size per call), cfg > 1 runs ONE doubled-batch pass per step.
  2. Text is encoded once per distinct prompt (T5Gemma sequences per call; repeated prompts; re-runs).
  3. A negative prompt is not encoded when cfg is 1 (it can have no effect).
  4. Constant conditioning is not recomputed per step (calls of the step-invariant DiT modules: once per
     conditioning batch the sampler uses, plain and CFG-doubled).
  5. No full-length attention masks (every attn_mask handed to SDPA at the real shapes, on ``meta``).
  6. SAME decode is chunked with bounded memory (chunk count; optional working-memory measurement).
  7. Models are offloaded when the next stage needs the memory (where that happens).
Each line says OK or WASTE. The tiny model is only used where counts do not depend on sizes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sa3_core.checkpoint import AUTOENCODER_PREFIX, build_modules
from sa3_core.pipeline import StableAudioModel

from .measure import GiB, StageMeter
from .random_model import meta_model, randomise_

REPO = Path(__file__).resolve().parents[1]
TINY = REPO.parent / "shared" / "fixtures" / "tiny-small"


def verdict(ok: bool) -> str:
    return "OK   " if ok else "WASTE"


class Hooks:
    """Forward hooks that record calls; removed on exit."""

    def __init__(self):
        self.handles = []
        self.calls: dict[str, list] = {}

    def record(self, name: str, module: torch.nn.Module, what=lambda args, kwargs: None) -> None:
        self.calls.setdefault(name, [])
        self.handles.append(
            module.register_forward_pre_hook(
                lambda mod, args, kwargs: self.calls[name].append(what(args, kwargs)), with_kwargs=True
            )
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def audit_calls(model: StableAudioModel) -> list[str]:
    lines = []
    dit, text = model.dit, model.text_encoder
    common = dict(duration=3.0, steps=8, seed=1, return_latents=True)

    def text_rows(args, kwargs):
        return int(kwargs["input_ids"].shape[0])

    def encoded_rows(**request) -> list[int]:
        """Sequences per T5Gemma call for one generate() from an empty prompt cache."""
        text.clear_cache()
        with Hooks() as hooks:
            hooks.record("t5", text.model, text_rows)
            model.generate("warm piano", **common, **request)
        return hooks.calls["t5"]

    # 1. Guidance passes.
    for cfg in (1.0, 7.0):
        with Hooks() as hooks:
            hooks.record("dit", dit, lambda args, kwargs: int(args[0].shape[0]))
            model.generate("warm piano", cfg_scale=cfg, **common)
        batches = hooks.calls["dit"]
        expected = [1 if cfg == 1 else 2] * 8
        lines.append(
            f"{verdict(batches == expected)} cfg {cfg:g}: {len(batches)} DiT calls for 8 steps, batch sizes "
            f"{sorted(Counter(batches).items())} (batch 1 request)"
            f"{'; no unconditional pass' if cfg == 1 else '; cond+uncond batched'}"
        )

    # 2. Text once per prompt.
    text.clear_cache()
    with Hooks() as hooks:
        hooks.record("t5", text.model, text_rows)
        model.generate("warm piano", batch_size=3, **common)
        first = list(hooks.calls["t5"])
        model.generate("warm piano", batch_size=3, seed=2, **{k: v for k, v in common.items() if k != "seed"})
        second = hooks.calls["t5"][len(first) :]
    lines.append(
        f"{verdict(sum(first) == 1 and not second)} batch of 3 identical prompts: T5Gemma encoded "
        f"{sum(first)} sequence(s) in {len(first)} call(s); re-run with a new seed: {sum(second)} sequence(s)"
    )
    rows = encoded_rows(negative_prompt="harsh noise", cfg_scale=7.0)
    lines.append(
        f"{verdict(sum(rows) == 2)} cfg 7 with a negative prompt: {sum(rows)} sequences in {len(rows)} "
        f"T5Gemma call(s) (prompt + negative)"
    )

    # 3. Negative prompt at cfg 1.
    rows = encoded_rows(negative_prompt="harsh noise", cfg_scale=1.0)
    lines.append(
        f"{verdict(sum(rows) == 1)} cfg 1 with a negative prompt: {sum(rows)} sequence(s) encoded "
        f"(the negative cannot change a cfg-1 result{'' if sum(rows) == 1 else '; encoding it is wasted'})"
    )

    # 4. Constant conditioning per step: computed once per conditioning batch the sampler uses (the plain one,
    # and the CFG-doubled one; a CFG interval that ends before the last step uses both).
    layer = dit.transformer.layers[0]
    for label, request in (
        ("cfg 1", {}),
        ("cfg 7", dict(cfg_scale=7.0)),
        ("cfg 7, cfg_interval (0.5, 1)", dict(cfg_scale=7.0, cfg_interval=(0.5, 1.0))),
    ):
        with Hooks() as hooks:
            hooks.record("dit", dit, lambda args, kwargs: int(args[0].shape[0]))
            hooks.record("to_kv", layer.cross_attn.to_kv)
            hooks.record("local", layer.to_local_embed)
            hooks.record("cond", dit.to_cond_embed)
            model.generate("warm piano", **common, **request)
        variants = len(set(hooks.calls.pop("dit")))  # batch 1 (plain) and/or 2 (doubled)
        counts = {k: len(v) for k, v in hooks.calls.items()}
        ok = all(c == variants for c in counts.values())
        lines.append(
            f"{verdict(ok)} generate() {label}: per 8 steps on {variants} conditioning batch(es), layer-0 "
            f"cross-attn to_kv ran {counts['to_kv']}x, to_local_embed {counts['local']}x, "
            f"to_cond_embed {counts['cond']}x"
        )
    return lines


class AttentionMasks(TorchFunctionMode):
    """Records (q length, k length, mask shape) of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            self.calls.append((args[0].shape[-2], args[1].shape[-2], None if mask is None else tuple(mask.shape)))
        return func(*args, **kwargs)


def audit_masks() -> list[str]:
    lines = []
    for variant, seconds in (("small", 120), ("medium", 120)):
        model = meta_model(variant)
        config, dit, autoencoder = model.config, model.dit, model.autoencoder
        latents = model.plan_window([seconds]).latents
        meta = dict(device="meta")
        tokens = latents + config.dit.num_memory_tokens
        with AttentionMasks() as recorder:
            dit(
                torch.zeros(1, 256, latents, **meta),
                torch.zeros(1, **meta),
                torch.zeros(1, 257, 768, **meta),
                torch.zeros(1, 768, **meta),
                torch.zeros(1, 257, latents, **meta),
                padding_mask=torch.ones(1, latents, dtype=torch.bool, **meta),
            )
        masks = [c[2] for c in recorder.calls if c[2] is not None]
        lines.append(
            f"{verdict(not masks)} {variant} DiT at {seconds} s ({tokens} tokens): {len(recorder.calls)} SDPA calls, "
            f"{len(masks)} with a mask (padding is applied by zeroing padded values, no mask)"
        )
        with AttentionMasks() as recorder:
            autoencoder.decode_audio(torch.zeros(1, 256, latents, **meta), chunked=True)
        masks = [c[2] for c in recorder.calls if c[2] is not None]
        biggest = max((torch.Size(m).numel() for m in masks), default=0)
        chunk_tokens = 128 * 17
        window = config.autoencoder.decoder.sliding_window
        kind = (
            f"sliding window +-{window[0] * 17} tokens (band attention)" if window else "2-latent chunks of 34 tokens"
        )
        lines.append(
            f"{verdict(biggest < chunk_tokens**2 // 10)} {variant} SAME decode at {seconds} s ({kind}): "
            f"{len(recorder.calls)} SDPA calls, largest mask {biggest} elements "
            f"(a full mask over one {chunk_tokens}-token chunk would be {chunk_tokens**2})"
        )
    return lines


def audit_decode_plan() -> list[str]:
    lines = []
    for variant in ("small", "medium"):
        model = meta_model(variant)
        for seconds in (10, 30, 120):
            latents = model.plan_window([seconds]).latents
            pieces = []
            hook = model.autoencoder.decoder.register_forward_pre_hook(
                lambda mod, args: pieces.append(args[0].shape[-1])  # noqa: B023 - removed before the next loop
            )
            model.autoencoder.decode_audio(torch.zeros(1, 256, latents, device="meta"), chunked=True)
            hook.remove()
            decoded = sum(pieces)
            lines.append(
                f"OK    {variant} decode of {seconds} s ({latents} latents): {len(pieces)} piece(s) of at most "
                f"{max(pieces)} latents, one at a time; {decoded} latents decoded "
                f"({decoded / latents - 1:+.0%} overlap overhead)"
            )
    return lines


def audit_decode_memory() -> list[str]:
    plan = meta_model("small")
    autoencoder = randomise_(
        build_modules(plan.config, device="meta")[AUTOENCODER_PREFIX], torch.Generator().manual_seed(0), "cpu"
    )
    lines = []
    for seconds in (10, 30, 120):
        latents = plan.plan_window([seconds]).latents
        z = torch.randn(1, 256, latents)
        output = latents * 4096 * 2 * 4
        for chunked in (True, False):
            with torch.inference_mode(), StageMeter() as meter:
                autoencoder.decode_audio(z, chunked=chunked)
            work = meter.result.peak_rss - meter.result.rss_before
            lines.append(
                f"      SAME-S decode {seconds:>3} s {'chunked  ' if chunked else 'one pass '}: working memory "
                f"{work / GiB:5.2f} GiB (output itself {output / GiB:.3f} GiB), {meter.result.wall_s:6.1f} s"
            )
    return lines


def audit_offload() -> list[str]:
    model_py = (REPO / "nodes" / "model.py").read_text()
    # One patcher per stage: each "<patcher class>(SA3<Stage>Part(...)" construction in nodes/model.py.
    patchers = len(re.findall(r"\b\w*[Pp]atcher\w*\(\s*SA3\w+Part\(", model_py))
    loads = len(re.findall(r"load_models_gpu", model_py))
    pipeline = (REPO / "sa3_core" / "pipeline.py").read_text()
    moves = re.findall(r"self\.(?:dit|autoencoder|text_encoder|conditioners)\.to\(", pipeline)
    return [
        f"{verdict(patchers >= 3 and loads >= 1)} ComfyUI: nodes/model.py wraps the stages in {patchers} ModelPatchers "
        f"(text / dit / vae) and loads each with load_models_gpu before its node runs, so ComfyUI offloads the "
        f"previous stage's weights when the next stage needs the memory",
        f"OK    sa3_core alone (CLI, generate): {len(moves)} device moves; every model stays on its device. On CPU "
        f"there is nothing to offload to; on CUDA medium needs about 6.5 GB in fp16 (official figure), so no offload "
        f"is needed",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", action="store_true", help="also measure SAME-S decode working memory (minutes)")
    args = parser.parse_args(argv)
    model = StableAudioModel.from_pretrained(TINY, device="cpu", dtype=torch.float32)
    sections = [
        ("1-4. guidance passes, text encoding, constant conditioning (tiny-small fixture model)", audit_calls(model)),
        ("5. attention masks at the real shapes (meta device)", audit_masks()),
        ("6. chunked SAME decode (official 128-latent chunks, 32 overlap)", audit_decode_plan()),
        ("7. offloading", audit_offload()),
    ]
    if args.memory:
        sections.append(("6b. SAME-S decode working memory (real shapes, random weights)", audit_decode_memory()))
    for title, lines in sections:
        print(f"\n{title}")
        for line in lines:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
