"""StableAudioModel: SA3 generation in every mode, as a sequence of explicit stages.

``generate`` takes the keyword arguments of the official ``stable_audio_3.StableAudioModel.generate`` and
reproduces its results (same seed -> same noise -> same audio). It is built from public stage methods that
the ComfyUI nodes call one by one, so a node graph and a Python call compute the same thing:

    plan_window        durations -> the latent window (length, padding mask, schedule lengths)
    initial_noise      seed -> (B, 256, L) noise and the generator the sampler keeps drawing from
    encode_prompts     prompts, negative prompts, durations -> conditioning (text encoded once per prompt)
    encode_audio       (sample_rate, audio) -> latents of the window (resampled, mono -> stereo)
    encode_inpaint_source  the same, untrimmed (the official inpaint source; one latent more for odd SAME-S windows)
    inpaint_condition  regions / mask + source latents -> the DiT's (B, 257, L) inpaint input
    sample_latents     everything above -> clean latents (per-step callback: progress, interruption)
    decode_latents     latents -> audio, zero past each item's valid length, peak policy, trimmed

Differences from the official code, all deliberate (see the issue notes): no global RNG (an explicit
``torch.Generator`` seeded like ``torch.manual_seed`` gives the same numbers), inpainting works for
batch > 1, per-item inpaint masks are zeroed at each item's own duration, bad input raises ``ValueError``
before any sampling, and a batch of different durations comes back as one tensor per item.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import audio_prep, hub, inpaint, official_args, output, validation
from .checkpoint import SA3Components, load_components
from .conditioners import Conditioning
from .config import ModelConfig
from .dit import DiTBlock
from .lora import LoRAGate, LoRAStack, gates_from_configs
from .precision import component_dtypes
from .same import SAMEBlock
from .sampling import (
    DistributionShift,
    DiTConditioning,
    GuidanceOptions,
    GuidedModel,
    StepCallback,
    build_schedule,
    mix_init,
    negative_token_mask,
    sample,
    shift_from_options,
)
from .validation import Region, require_finite
from .window import Window, adapt_sample_size, latent_length

AudioInput = tuple[int, torch.Tensor]
"""``(sample_rate, audio)``, or ``(audio, sample_rate)`` as ``torchaudio.load`` returns it; audio is (T,),
(C, T) or (1, C, T) float samples."""


def default_device() -> torch.device:
    """The official order: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compile_blocks(
    root: torch.nn.Module, kind: type[torch.nn.Module], *, mode: str | None = None, backend: str = "inductor"
) -> None:
    """``torch.compile`` every ``kind`` module inside ``root`` in place, for static shapes (the repeated
    units: their code is shared, so it compiles once per input shape)."""
    for module in root.modules():
        if isinstance(module, kind):
            module.compile(mode=mode, backend=backend, dynamic=False)


def resolve_seed(seed: int | None) -> int:
    """``-1`` (or None) draws a fresh random seed; anything else must be a non-negative integer."""
    if seed is None or seed == -1:
        return random.SystemRandom().randrange(0, 2**31)
    return validation.validate_seed(seed)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` whose stream equals the global one after ``torch.manual_seed(seed)``."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


# ---------------------------------------------------------------------------------------------------
# Stage results
# ---------------------------------------------------------------------------------------------------


@dataclass
class PromptConditioning:
    """Positive (and optional negative) conditioning for a batch, with the durations it was made for."""

    positive: Conditioning
    negative: Conditioning | None
    durations: tuple[float, ...]

    @property
    def batch_size(self) -> int:
        return len(self.durations)


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


class StableAudioModel:
    """An SA3 model (DiT + SAME + conditioners + T5Gemma) on one device, with the official generate API."""

    def __init__(self, components: SA3Components, *, device: torch.device | str, dtype: torch.dtype):
        self.components = components
        self.config: ModelConfig = components.config
        self.model_config: dict = copy.deepcopy(components.config.raw)  # the official attribute: the raw JSON
        self.dit = components.dit
        self.autoencoder = components.autoencoder
        self.conditioners = components.conditioners
        self.text_encoder = components.text_encoder
        self.device = torch.device(device)
        self.dtype = dtype
        self.lora: LoRAStack | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path,
        device: torch.device | str | None = None,
        model_half: bool = True,
        *,
        dtype: torch.dtype | None = None,
        models_dir: str | Path | None = None,
        text_encoder_path: str | Path | None = None,
        attention_backend: str = "auto",
        base: bool = False,
        autoencoder_dtype: torch.dtype | None = None,
        weight_dtype: torch.dtype | None = None,
    ) -> StableAudioModel:
        """Load an official model by name (``small-music``, ``small-sfx``, ``medium`` and their ``-base``
        versions, found offline in the Hugging Face cache or a models folder: sa3_core.hub), an official
        model folder, or a Comfy-Org single file (then ``text_encoder_path`` is needed to encode prompts).
        Never touches the network. ``device`` defaults to cuda -> mps -> cpu.

        Precision (sa3_core.precision): ``dtype`` when given; otherwise ``model_half`` (the official flag,
        default True) selects the device's default — fp16 on CUDA, fp32 on MPS, on CPU the faster of bf16
        and fp32 (measured once per process) — and ``model_half=False`` float32 everywhere. SAME's
        ``autoencoder_dtype`` follows with exceptions (never bf16 on MPS). ``weight_dtype``
        (``torch.float8_e4m3fn`` / ``float8_e5m2``) stores the DiT's and the text encoder's weight matrices
        in float8, computing in the compute dtype (sa3_core.ops)."""
        device = torch.device(device) if device is not None else default_device()
        resolved = hub.resolve_model(model_name_or_path, models_dir=models_dir)
        requested = dtype if dtype is not None else (None if model_half else torch.float32)
        dtypes = component_dtypes(device, requested, autoencoder_dtype)
        components = load_components(
            resolved.folder,
            device=device,
            dtype=dtypes.dit,
            autoencoder_dtype=dtypes.autoencoder,
            weight_dtype=weight_dtype,
            text_encoder_path=text_encoder_path or resolved.text_encoder,
            attention_backend=attention_backend,
            base=base,
        )
        return cls(components, device=device, dtype=dtypes.dit)

    # -- facts ----------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def model_half(self) -> bool:
        """The official attribute: whether the model runs in float16."""
        return self.dtype == torch.float16

    @property
    def downsampling_ratio(self) -> int:
        return self.autoencoder.downsampling_ratio

    @property
    def max_seconds(self) -> float:
        """The longest duration this model generates (the config's ``sample_size``, 120 s for SA3)."""
        return self.config.max_seconds

    # The official recommendations (sa3_core.config.RECOMMENDATIONS): 8 steps, cfg 1 (no guidance) and
    # ping-pong for the post-trained models; 50 steps, cfg 7 and Euler for the -base models.

    @property
    def default_sampler(self) -> str:
        return self.config.recommended.sampler

    @property
    def default_steps(self) -> int:
        return self.config.recommended.steps

    @property
    def default_cfg_scale(self) -> float:
        return self.config.recommended.cfg_scale

    # -- stage 1: the window --------------------------------------------------------------------------

    def plan_window(
        self, durations: Sequence[float], padding_sec: float = 6.0, sample_size: int | None = None
    ) -> Window:
        """The latent window for a batch with these per-item durations (validated)."""
        if not durations:
            raise ValueError("a batch needs at least one item")
        validation.validate_batch_size(len(durations), "batch")
        durations = tuple(float(d) for d in durations)
        validation.validate_durations(durations, self.max_seconds)
        if validation.finite_number(padding_sec, "duration_padding_sec") < 0:
            raise ValueError(f"duration_padding_sec must be >= 0, got {padding_sec!r}")
        cap = self.config.sample_size if sample_size is None else int(sample_size)
        ratio = self.downsampling_ratio
        audio_samples = adapt_sample_size(
            max(durations), padding_sec, self.sample_rate, ratio, self.config.autoencoder.latent_align, cap
        )
        return Window(
            durations, audio_samples, latent_length(audio_samples, ratio), float(padding_sec), self.sample_rate, ratio
        )

    # -- stage 2: noise -------------------------------------------------------------------------------

    def initial_noise(self, window: Window, seed: int) -> tuple[torch.Tensor, torch.Generator]:
        """The official first draw, ``randn([B, 256, L])`` right after seeding, and the generator the
        ping-pong sampler continues from."""
        generator = make_generator(seed, self.device)
        noise = torch.randn(
            [window.batch_size, self.autoencoder.latent_dim, window.latents], generator=generator, device=self.device
        )
        return noise, generator

    # -- stage 3: text --------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompts(
        self, prompts: Sequence[str], durations: Sequence[float], negative_prompts: Sequence[str] | None = None
    ) -> PromptConditioning:
        """Prompt + ``seconds_total`` conditioning per item; the negative side only when given."""
        if self.text_encoder is None:
            raise ValueError("this model was loaded without a T5Gemma text encoder; pass text_encoder_path")
        validation.validate_batch_size(len(prompts), "prompts")
        if len(prompts) != len(durations):
            raise ValueError(f"{len(prompts)} prompts for {len(durations)} durations")
        if negative_prompts is not None and len(negative_prompts) != len(prompts):
            raise ValueError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        validation.validate_prompts(prompts, "prompt")
        validation.validate_prompts(negative_prompts or (), "negative_prompt")

        def condition(texts: Sequence[str]) -> Conditioning:
            hidden, mask = self.text_encoder.encode(list(texts))
            hidden = hidden.to(device=self.device, dtype=self.dtype)
            return self.conditioners(hidden, mask.to(self.device), list(durations))

        return PromptConditioning(
            positive=condition(prompts),
            negative=condition(negative_prompts) if negative_prompts is not None else None,
            durations=tuple(float(d) for d in durations),
        )

    # -- stage 4: audio inputs ------------------------------------------------------------------------

    def prepare_audio(self, audio: AudioInput, window: Window, name: str = "audio") -> torch.Tensor:
        """``(sr, audio)`` (or ``(audio, sr)``, as ``torchaudio.load`` returns it) -> (1, C, window samples)
        float32 on the device, as the official ``prepare_audio`` (:func:`sa3_core.audio_prep.prepare`):
        made the model's channel count, resampled to its rate, cut or zero-padded to the window."""
        return audio_prep.prepare(
            audio,
            length=window.audio_samples,
            sample_rate=self.sample_rate,
            channels=self.autoencoder.audio_channels,
            device=self.device,
            name=name,
        )[None]

    @torch.inference_mode()
    def encode_audio(self, audio: AudioInput, window: Window, name: str = "audio") -> torch.Tensor:
        """``(sr, audio)`` -> SAME latents (1, 256, L) of the window (chunked as the config says)."""
        return self.encode_inpaint_source(audio, window, name)[..., : window.latents]

    @torch.inference_mode()
    def encode_inpaint_source(self, audio: AudioInput, window: Window, name: str = "inpaint_audio") -> torch.Tensor:
        """``(sr, audio)`` -> SAME latents (1, 256, E) of the window's audio, untrimmed, as the official code
        encodes an inpaint source. E = L, except for a SAME-S window of an odd number of latents (only a
        ``sample_size`` cap makes one) encoded in one piece: the encoder pads to whole 2-latent chunks, E = L + 1.
        :meth:`inpaint_condition` keeps that length (see there)."""
        prepared = self.prepare_audio(audio, window, name)
        return self.autoencoder.encode_audio(
            prepared.to(self._autoencoder_dtype()), chunked=self.config.autoencoder.chunked
        )

    def inpaint_condition(
        self,
        window: Window,
        source_latents: torch.Tensor | None = None,
        *,
        regions: Sequence[Region] | Sequence[Sequence[Region]] | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The DiT's ``local_add_cond`` (B, 257, L): the inpaint mask channel (1 = keep, 0 = generate) and
        the source latents where kept. Without regions or mask it is all zeros (plain generation).

        ``regions``: seconds, shared by the batch or one list per item; ``mask``: a prebuilt mask in
        samples ((N,), (1, N) or (B, N)). ``source_latents``: (1 or B, 256, E) from :meth:`encode_inpaint_source`.

        With a source the result has the source's length E, the mask resampled to it (official). When E = L + 1
        (an odd SAME-S window) the DiT aligns it to the end of its token sequence, as the official DiT does
        (``_left_pad_to_match``): latent i gets the conditioning of source latent i + 1, the last memory token
        that of latent 0. Odd in time, but the official result.
        """
        batch, length = window.batch_size, window.latents
        latent_dim = self.autoencoder.latent_dim
        if regions is None and mask is None:
            if source_latents is not None:
                raise ValueError("inpaint audio was given without inpaint regions or an inpaint mask")
            return torch.zeros(batch, 1 + latent_dim, length, device=self.device)
        if source_latents is not None:
            length = self.autoencoder.encoded_length(window.audio_samples, chunked=self.config.autoencoder.chunked)
        latent_mask = inpaint.inpaint_mask(
            batch,
            window.audio_samples,
            length,
            self.sample_rate,
            window.durations,
            regions=regions,
            mask=mask,
            device=self.device,
        )
        if source_latents is None:
            masked = torch.zeros(batch, latent_dim, length, device=self.device)
        else:
            if source_latents.shape[0] not in (1, batch) or source_latents.shape[-1] != length:
                raise ValueError(
                    f"inpaint latents of shape {tuple(source_latents.shape)} do not fit a window of "
                    f"{batch} x {window.latents} latents (the encoder gives {length} for it)"
                )
            masked = source_latents.float().expand(batch, -1, -1) * latent_mask
        return torch.cat([latent_mask, masked], dim=1)

    # -- stage 5: sampling ----------------------------------------------------------------------------

    def dit_conditioning(
        self, conditioning: PromptConditioning, window: Window, local_add_cond: torch.Tensor | None = None
    ) -> DiTConditioning:
        """Assemble the DiT inputs (cast to the model dtype) from the stage outputs."""
        if conditioning.batch_size != window.batch_size:
            raise ValueError(f"conditioning for {conditioning.batch_size} items but a window of {window.batch_size}")
        if conditioning.durations != window.durations:
            raise ValueError(
                f"conditioning durations {list(conditioning.durations)} differ from the window's "
                f"{list(window.durations)}"
            )
        if local_add_cond is None:
            local_add_cond = self.inpaint_condition(window)
        pos, neg = conditioning.positive, conditioning.negative
        return DiTConditioning(
            cross_attn_cond=pos.cross_attn_cond.to(self.dtype),
            global_cond=pos.global_cond.to(self.dtype),
            local_add_cond=local_add_cond.to(self.dtype),
            padding_mask=window.padding_mask(self.device),
            negative_cross_attn_cond=None if neg is None else neg.cross_attn_cond.to(self.dtype),
            negative_cross_attn_mask=None if neg is None else negative_token_mask(neg.prompt_mask),
        )

    def schedule(
        self,
        window: Window,
        steps: int,
        sigma_max: float = 1.0,
        dist_shift: DistributionShift | Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Per-item timesteps (B, steps + 1); the shift defaults to the config's sampling shift."""
        if dist_shift is None or isinstance(dist_shift, Mapping):
            dist_shift = shift_from_options(dist_shift if dist_shift is not None else self.config.sampling_shift)
        return build_schedule(steps, sigma_max, dist_shift, window.effective_lengths(), device=self.device)

    @torch.inference_mode()
    def sample_latents(
        self,
        noise: torch.Tensor,
        generator: torch.Generator,
        conditioning: DiTConditioning,
        window: Window,
        *,
        steps: int,
        guidance: GuidanceOptions | None = None,
        sampler: str | None = None,
        init_latents: torch.Tensor | None = None,
        init_noise_level: float = 1.0,
        dist_shift: DistributionShift | Mapping[str, Any] | None = None,
        callback: StepCallback | None = None,
        lora_gates: Sequence[LoRAGate] = (),
    ) -> torch.Tensor:
        """Run the sampler from ``noise`` (mixed with ``init_latents`` at ``init_noise_level`` for
        audio-to-audio) and return the clean latents, float32.

        ``lora_gates`` (the official ``lora_configs``): before each DiT forward the loaded LoRAs are switched
        on or off for that step's t (sa3_core.lora.LoRAStack.gate); afterwards every LoRA is on again."""
        validation.validate_steps(steps)
        _refuse_non_finite_inputs(conditioning, init_latents)
        sigma_max = 1.0
        x = noise.to(self.dtype)
        if init_latents is not None:
            validation.validate_init_noise_level(init_noise_level)
            sigma_max = float(init_noise_level)
            x = mix_init(init_latents.to(self.dtype).expand_as(x), x, sigma_max)
        schedule = self.schedule(window, steps, sigma_max, dist_shift)
        # The conditioning is the same at every step: the guided model computes its embeddings and
        # cross-attention K/V once per conditioning batch (plain, CFG-doubled), again only when gates change weights.
        model_fn = GuidedModel(self.dit, conditioning, guidance or GuidanceOptions())
        if lora_gates:
            self._check_gates(lora_gates)
            model_fn = _GatedModel(model_fn, self.lora, lora_gates)
        try:
            latents = sample(
                model_fn, x, schedule, sampler=sampler or self.default_sampler, callback=callback, generator=generator
            )
        finally:
            if lora_gates:
                self.lora.clear_gates()
        require_finite(
            latents,
            "sampling produced NaN or infinite latents, so the audio would be noise or full-scale clipping. "
            "Likely causes: extreme settings (cfg_scale, apg_scale, cfg_norm_threshold, scale_phi, the "
            "distribution shift / sampler shift), or DiT weights that are broken or pushed out of range "
            "by a LoRA (its alpha or strength)",
        )
        return latents.float()

    def _check_gates(self, gates: Sequence[LoRAGate]) -> None:
        if self.lora is None or not len(self.lora):
            raise ValueError("lora_configs were given but no LoRA is loaded (load_lora first)")
        self.lora.check_gates(gates)

    # -- stage 6: decoding ----------------------------------------------------------------------------

    @torch.inference_mode()
    def decode_latents(
        self,
        latents: torch.Tensor,
        window: Window,
        *,
        chunked: bool | None = None,
        peak: output.PeakPolicy = "clamp",
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Latents (B, 256, L) -> audio (B, 2, samples) float32: SAME decode (chunked by default as the
        config says, bounded memory), zeros past each item's valid latents, then the peak policy."""
        chunked = self.config.autoencoder.chunked if chunked is None else chunked
        require_finite(
            latents,
            "the latents to decode hold NaN or infinite values (the sampler's settings, the "
            "model's weights or a LoRA produced them)",
        )
        audio = self.autoencoder.decode_audio(latents.to(self._autoencoder_dtype()), chunked=chunked, progress=progress)
        audio = output.zero_padding(audio, window.padding_mask(audio.device), self.downsampling_ratio)
        # Checked before the peak policy: clamping would turn infinities into full-scale samples.
        require_finite(
            audio,
            "decoding produced NaN or infinite audio from finite latents: the autoencoder's "
            "weights are broken, or it ran in a dtype too narrow for these latents",
        )
        return output.apply_peak_policy(audio, peak)

    def _autoencoder_dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    # -- the official entry point ---------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        duration: float | Sequence[float] = 120,
        steps: int | None = None,
        cfg_scale: float | None = None,
        batch_size: int = 1,
        sample_size: int | None = None,
        truncate_output_to_duration: bool = True,
        seed: int = -1,
        init_audio: AudioInput | None = None,
        init_noise_level: float = 1.0,
        inpaint_audio: AudioInput | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_mask_start_seconds: float | Sequence[float] | None = None,
        inpaint_mask_end_seconds: float | Sequence[float] | None = None,
        duration_padding_sec: float = 6.0,
        apg_scale: float = 1.0,
        dist_shift: DistributionShift | Mapping[str, Any] | None = None,
        return_latents: bool = False,
        chunked_decode: bool | None = None,
        sampler_type: str | None = None,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
        cfg_norm_threshold: float = 0.0,
        scale_phi: float = 0.0,
        peak: output.PeakPolicy = "clamp",
        callback: StepCallback | None = None,
        conditioning: Sequence[Mapping[str, Any]] | None = None,
        conditioning_tensors: Mapping[str, Any] | None = None,
        negative_conditioning: Sequence[Mapping[str, Any]] | None = None,
        negative_conditioning_tensors: Mapping[str, Any] | None = None,
        sigma_max: float | None = None,
        lora_configs: Sequence[Mapping[str, Any]] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Generate audio; the official keyword arguments and results.

        Returns audio (B, 2, int(duration * sr)) float32, or latents (B, 256, L) with ``return_latents``.
        When per-item durations differ, returns a list of (2, int(d_b * sr)) tensors, one per item (the
        official code returns the untrimmed window instead; ``truncate_output_to_duration=False`` gives that).
        ``steps`` / ``cfg_scale`` default to the model's recommendation (8 / 1 post-trained, 50 / 7 base).
        The seed used is in :attr:`last_seed` (``seed=-1`` draws one).
        ``peak``: "clamp" (official hard clip), "limit" (scale an item down only if it would clip), "none".

        The official low-level path works too: ``conditioning=[{"prompt": ..., "seconds_total": ...}, ...]``
        (and ``negative_conditioning``) replace prompt/duration; ``conditioning_tensors`` /
        ``negative_conditioning_tensors`` (official dicts ``{"prompt": (emb, mask), "seconds_total": (emb, mask)}``)
        replace the text encoding. Unlike the official code, the window and padding mask still come from the
        durations (``conditioning`` or ``duration``), never a silent 120 s window. ``sigma_max`` is accepted
        for compatibility; rectified-flow models ignore it officially, so only ``None`` / 1 is allowed
        (use ``init_noise_level``).

        ``lora_configs=[{"lora_index": i, "interval": (lo, hi), "layer_filter": "..."}, ...]`` (official): LoRA
        ``i`` acts on the DiT only at steps whose t (item 0's) lies in [lo, hi], and then not on DiT modules
        whose name contains a ``layer_filter`` entry (comma-separated, ``layers[0-5]`` ranges). LoRAs no entry
        names, and the conditioner's LoRAs, act at every step. After the call every LoRA is on again.
        """
        prompt, negative_prompt, duration, batch_size = official_args.plain_request(
            prompt,
            negative_prompt,
            duration,
            batch_size,
            conditioning=conditioning,
            negative_conditioning=negative_conditioning,
            conditioning_tensors=conditioning_tensors,
            sigma_max=sigma_max,
        )
        # 1. Validate the whole request before any work.
        if prompt is None:
            raise ValueError("prompt is required")
        validation.validate_batch_size(batch_size)
        prompts = validation.per_item(prompt, batch_size, "prompt")
        negatives = (
            None if negative_prompt is None else validation.per_item(negative_prompt, batch_size, "negative_prompt")
        )
        durations = validation.per_item(duration, batch_size, "duration")
        validation.validate_prompts(prompts, "prompt")
        validation.validate_prompts(negatives or (), "negative_prompt")
        steps = self.default_steps if steps is None else steps
        validation.validate_steps(steps)
        cfg_scale = self.default_cfg_scale if cfg_scale is None else float(cfg_scale)
        validation.validate_init_noise_level(init_noise_level)  # also without init audio: a wrong value is a mistake
        output.validate_peak_policy(peak)
        window = self.plan_window(durations, duration_padding_sec, sample_size)
        regions = inpaint.regions_from_seconds(inpaint_mask_start_seconds, inpaint_mask_end_seconds)
        if regions is not None:
            inpaint_mask = None  # the official precedence: seconds win over a prebuilt mask
        guidance = GuidanceOptions(
            cfg_scale=cfg_scale,
            apg_scale=apg_scale,
            cfg_interval=tuple(cfg_interval),
            cfg_norm_threshold=cfg_norm_threshold,
            scale_phi=scale_phi,
        )
        if isinstance(dist_shift, Mapping):
            dist_shift = shift_from_options(dist_shift)  # checks its settings now, before any work
        lora_gates = gates_from_configs(lora_configs) if lora_configs is not None else []
        if lora_gates:
            self._check_gates(lora_gates)
        # Checks every region and audio input (raises here, before sampling).
        local_add_cond = self._build_inpaint(window, inpaint_audio, regions, inpaint_mask)
        init_latents = self.encode_audio(init_audio, window, "init_audio") if init_audio is not None else None

        # 2. Noise first (the official order), then text.
        self.last_seed = seed = resolve_seed(seed)
        noise, generator = self.initial_noise(window, seed)
        if cfg_scale == 1.0:  # without guidance the negative side is never used: do not encode it
            negatives, negative_conditioning_tensors = None, None
        conditioning = self._conditioning(
            prompts, durations, negatives, conditioning_tensors, negative_conditioning_tensors
        )
        dit_cond = self.dit_conditioning(conditioning, window, local_add_cond)

        # 3. Sample and decode.
        latents = self.sample_latents(
            noise,
            generator,
            dit_cond,
            window,
            steps=steps,
            guidance=guidance,
            sampler=sampler_type,
            init_latents=init_latents,
            init_noise_level=init_noise_level,
            dist_shift=dist_shift,
            callback=callback,
            lora_gates=lora_gates,
        )
        if return_latents:
            return latents
        audio = self.decode_latents(latents, window, chunked=chunked_decode, peak=peak)
        if not truncate_output_to_duration:
            return audio
        lengths = window.output_samples()
        if len(set(lengths)) == 1:
            return audio[..., : lengths[0]]
        return output.trim_to_durations(audio, window.durations, self.sample_rate)

    last_seed: int | None = None
    """The seed of the latest :meth:`generate` call (the drawn one when ``seed=-1``)."""

    def _conditioning(self, prompts, durations, negatives, tensors, negative_tensors) -> PromptConditioning:
        """Encode the prompts, unless the caller passed precomputed (official-format) tensors."""
        need_text = tensors is None or (negatives is not None and negative_tensors is None)
        encoded = self.encode_prompts(prompts, durations, negatives if need_text else None) if need_text else None
        batch = len(durations)
        positive = official_args.conditioning_from_tensors(tensors, batch) if tensors is not None else encoded.positive
        if negative_tensors is not None:
            negative = official_args.conditioning_from_tensors(negative_tensors, batch)
        else:
            negative = encoded.negative if encoded is not None else None
        return PromptConditioning(positive=positive, negative=negative, durations=tuple(float(d) for d in durations))

    def _build_inpaint(
        self, window: Window, inpaint_audio: AudioInput | None, regions: list[Region] | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        if regions is None and mask is None:
            if inpaint_audio is not None:
                raise ValueError("inpaint_audio was given without inpaint_mask_start/end_seconds or an inpaint_mask")
            return self.inpaint_condition(window)
        # Regions are validated inside inpaint_condition; do it before the (slow) audio encode.
        if regions is not None:
            inpaint.regions_per_item(regions, window.durations)
        source = self.encode_inpaint_source(inpaint_audio, window) if inpaint_audio is not None else None
        return self.inpaint_condition(window, source, regions=regions, mask=mask)

    # -- speed ----------------------------------------------------------------------------------------

    def compile(
        self, parts: Sequence[str] = ("dit", "autoencoder"), *, mode: str | None = None, backend: str = "inductor"
    ) -> None:
        """Opt-in ``torch.compile`` of the repeated blocks (every DiT block and/or every SAME block), in
        place: state dict keys, LoRA and the outputs' meaning are unchanged; each new input shape compiles
        once more (static shapes).

        Off by default because it does not pay on the CPU it was measured on (bench/README.md): after
        ~40 s of compilation, a DiT forward is 2.5 % and a SAME decode 9 % faster. On CUDA it removes
        kernel launches and is expected to pay more; unmeasured in this project."""
        blocks = {"dit": (self.dit, DiTBlock), "autoencoder": (self.autoencoder, SAMEBlock)}
        parts = (parts,) if isinstance(parts, str) else tuple(parts)
        unknown = set(parts) - set(blocks)
        if unknown:
            raise ValueError(f"unknown part(s) to compile {sorted(unknown)}; choose from {sorted(blocks)}")
        for part in parts:
            compile_blocks(*blocks[part], mode=mode, backend=backend)

    # -- LoRA -----------------------------------------------------------------------------------------

    def load_lora(self, paths: str | Path | Sequence[str | Path], *, dora_mode: str | None = None) -> list[str]:
        """Append LoRA files (official safetensors) to the stack, each at strength 1; they compose in order.

        ``dora_mode``: "linear" (default; DoRA strength scales the change linearly) or "official" (the
        official response, needed to reproduce its outputs at strengths other than 0 and 1).
        """
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if self.lora is None:
            self.lora = LoRAStack({"dit": self.dit, "conditioner": self.conditioners}, dora_mode=dora_mode or "linear")
        elif dora_mode is not None:
            self.lora.set_dora_mode(dora_mode)
        return self.lora.load(list(paths))

    def set_lora_strength(self, strength: float, lora_index: int | None = None, target: str | None = None) -> None:
        """Strength of every LoRA (``lora_index=None``) or one, on both targets or only ``"dit"`` /
        ``"conditioner"``. 0 disables without unloading; > 1 amplifies."""
        if self.lora is None:
            raise ValueError("no LoRA is loaded")
        self.lora.set_strength(strength, lora_index=lora_index, target=target)

    def unload_lora(self) -> None:
        """Remove every LoRA; the base weights come back bit for bit."""
        if self.lora is not None:
            self.lora.unload()
            self.lora = None


class _GatedModel:
    """A sampler's ``model_fn`` that sets the LoRA gates for each step's t before the DiT forward (the official
    DiT evaluates ``lora_configs`` at the top of its forward, from ``t[0]``)."""

    def __init__(self, model_fn: GuidedModel, stack: LoRAStack, gates: Sequence[LoRAGate]):
        self.model_fn, self.stack, self.gates = model_fn, stack, list(gates)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.stack.gate(t, self.gates):  # weights changed: step constants computed from the old ones are stale
            self.model_fn.forget_constants()
        return self.model_fn(x, t)


def _refuse_non_finite_inputs(conditioning: DiTConditioning, init_latents: torch.Tensor | None) -> None:
    """NaN in the sampler's inputs makes every step NaN: say where it came from before sampling."""
    named = {
        "the prompt conditioning": conditioning.cross_attn_cond,
        "the duration conditioning": conditioning.global_cond,
        "the negative prompt conditioning": conditioning.negative_cross_attn_cond,
    }
    for what, tensor in named.items():
        if tensor is not None:
            require_finite(
                tensor,
                f"{what} holds NaN or infinite values: the text encoder's or the conditioners' "
                "weights are broken, or a LoRA on the conditioner pushed them out of range",
            )
    for what, tensor in {
        "the inpaint / continuation input": conditioning.local_add_cond,
        "the init audio's encoding": init_latents,
    }.items():
        if tensor is not None:
            require_finite(tensor, f"{what} holds NaN or infinite values: the autoencoder's weights are broken")
