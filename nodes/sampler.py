"""SA3_RFSampler: noise + conditioning -> clean latents, with the official samplers and guidance."""

from __future__ import annotations

from comfy_api.latest import io

from ..sa3_core.pipeline import PromptConditioning
from ..sa3_core.sampling import SAMPLERS, GuidanceOptions
from ..sa3_core.validation import MAX_SEED, finite_number, validate_seed
from ..sa3_core.window import Window
from .common import (
    CATEGORY,
    MODEL_TOOLTIP,
    SA3ConditioningType,
    SA3LatentInfo,
    SA3ModelType,
    make_latent,
    repeat_conditioning,
    sa3_info,
    step_callback,
    to_device,
)
from .parsing import choose

AUTO = "auto"
SAMPLER_CHOICES = (AUTO,) + SAMPLERS


def match_conditioning(cond: PromptConditioning, window: Window) -> PromptConditioning:
    """The conditioning for this window: the same items, or one prompt repeated over a batch of equal
    durations. Anything else is a wiring mistake the user must see."""
    if cond.durations == window.durations:
        return cond
    if cond.batch_size == 1 and all(d == cond.durations[0] for d in window.durations):
        return repeat_conditioning(cond, window.batch_size)
    raise ValueError(
        f"the conditioning (durations {list(cond.durations)} s) does not fit the latent (durations "
        f"{list(window.durations)} s): give Text Encode and Empty Latent the same duration, or connect the "
        "conditioning to the Empty Latent's conditioning input (needed for per-item prompts or durations)"
    )


def flow_shift(shift: float) -> dict | None:
    """The sampler's ``shift`` widget as a distribution shift: 0 keeps the model's own schedule."""
    if shift == 0:
        return None
    if shift < 0:
        raise ValueError(f"shift must be 0 (model default) or positive, got {shift}")
    return {"type": "flux", "alpha_min": float(shift), "alpha_max": float(shift)}


def _dit_memory(model, window: Window, guided: bool) -> int:
    """A rough activation budget for one DiT forward (bytes), so ComfyUI frees room first."""
    cfg = model.core.config.dit
    tokens = window.latents + cfg.num_memory_tokens + 257
    return window.batch_size * (2 if guided else 1) * tokens * cfg.embed_dim * 4 * 48


class SA3RFSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_RFSampler",
            display_name="Stable Audio 3 Sampler",
            category=f"{CATEGORY}/sampling",
            description=(
                "Samples Stable Audio 3 latents with the official rectified-flow samplers and schedule "
                "(same seed and settings give the same audio as the official generate()). Shows per-step "
                "progress; Cancel stops it after the current step."
            ),
            inputs=[
                SA3ModelType.Input("model", tooltip=MODEL_TOOLTIP),
                SA3ConditioningType.Input(
                    "conditioning",
                    tooltip=(
                        "From Stable Audio 3 Text Encode: prompts and durations, one per item (or one prompt for "
                        "every item)."
                    ),
                ),
                io.Latent.Input("latent", tooltip="From Empty Latent, Init Audio or Inpaint / Continue."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip=("Noise seed; the same seed and settings reproduce the same audio."),
                ),
                io.Int.Input(
                    "steps",
                    default=0,
                    min=0,
                    max=1000,
                    tooltip=(
                        "Sampling steps. 0 = the model's recommendation: 8 for the post-trained models, 50 for the "
                        "-base models."
                    ),
                ),
                io.Float.Input(
                    "cfg",
                    default=0.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    round=0.01,
                    tooltip=(
                        "Classifier-free guidance scale. 0 = the model's recommendation: 1 (no guidance) for the "
                        "post-trained models, 7 for the -base models. The negative prompt only acts above 1."
                    ),
                ),
                io.Float.Input(
                    "apg_scale",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip=(
                        "Adaptive projected guidance (only with cfg > 1): 1 = APG (official default, fewer "
                        "artefacts at high cfg), 0 = plain CFG, in between blends."
                    ),
                ),
                io.Combo.Input(
                    "sampler",
                    options=list(SAMPLER_CHOICES),
                    default=AUTO,
                    tooltip=(
                        "auto: pingpong for post-trained models, euler for -base models (official choice). "
                        "rk4 and dpmpp are alternatives for the -base models."
                    ),
                ),
                io.Float.Input(
                    "shift",
                    default=0.0,
                    min=0.0,
                    max=100.0,
                    step=0.05,
                    tooltip=(
                        "Timestep schedule. 0 = the model's own (official log-SNR schedule). Above 0: a constant "
                        "flow shift t' = s·t / (1 + (s-1)·t) as ComfyUI's ModelSamplingSD3 (1 = linear; larger "
                        "spends more steps at high noise)."
                    ),
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Clean latents; decode with VAE Decode.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        conditioning,
        latent,
        seed: int,
        steps: int = 0,
        cfg: float = 0.0,
        apg_scale: float = 1.0,
        sampler: str = AUTO,
        shift: float = 0.0,
    ) -> io.NodeOutput:
        info = sa3_info(latent, "Sampler")
        choose("sampler", sampler, SAMPLER_CHOICES)
        # ComfyUI's min/max checks let NaN through, and `cfg or default` would keep it.
        cfg, apg_scale, shift = (
            finite_number(value, name) for value, name in ((cfg, "cfg"), (apg_scale, "apg_scale"), (shift, "shift"))
        )
        validate_seed(seed)
        core = model.core
        window = info.window
        steps = steps or core.default_steps
        cfg_scale = cfg or core.default_cfg_scale
        guidance = GuidanceOptions(cfg_scale=float(cfg_scale), apg_scale=float(apg_scale))
        dist_shift = flow_shift(shift)
        cond = match_conditioning(conditioning, window)

        model.load_parts("dit", memory_required=_dit_memory(model, window, cfg_scale != 1))
        device = core.device
        local = None if info.local_add_cond is None else info.local_add_cond.to(device)
        dit_cond = core.dit_conditioning(to_device(cond, device), window, local)
        noise, generator = core.initial_noise(window, seed)
        init_latents = None if info.init_noise_level is None else latent["samples"].to(device)
        latents = core.sample_latents(
            noise,
            generator,
            dit_cond,
            window,
            steps=steps,
            guidance=guidance,
            sampler=None if sampler == AUTO else sampler,
            init_latents=init_latents,
            init_noise_level=info.init_noise_level if info.init_noise_level is not None else 1.0,
            dist_shift=dist_shift,
            callback=step_callback(steps),
        )
        return io.NodeOutput(make_latent(latents, SA3LatentInfo(window=window)))
