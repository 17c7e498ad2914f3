"""Typed configuration objects parsed from the official SA3 ``model_config.json``.

The official factory accepts almost any dict and silently ignores what it does not read. We do the
opposite: every field we do not understand, and every value we cannot run, is an error that names
the field and the file. Fields that only matter for training are accepted and ignored, but only when
they are listed in ``_IGNORED_*`` below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A model config that we cannot build a model from."""


class _Section:
    """Reads one dict of a config, remembering where it came from, so errors name the field."""

    def __init__(self, data: Any, where: str, source: str):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {where} must be an object, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._path(key)}: {message}")

    def get(self, key: str, default: Any = ..., types: type | tuple[type, ...] | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.error(key, "missing required field")
            return default
        value = self.data[key]
        if (
            types is not None
            and not isinstance(value, types)
            or isinstance(value, bool)
            and types in (int, float, (int, float))
        ):
            expected = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise self.error(key, f"expected {expected}, got {value!r}")
        return value

    def expect(self, key: str, allowed: tuple, default: Any = ...) -> Any:
        """A field whose value must be one of ``allowed`` (values we know how to run)."""
        value = self.get(key, default)
        if value not in allowed:
            raise self.error(key, f"unsupported value {value!r} (supported: {', '.join(map(repr, allowed))})")
        return value

    def section(self, key: str, default: Any = ...) -> _Section:
        return _Section(self.get(key, default), self._path(key), self.source)

    def finish(self, ignored: frozenset[str] = frozenset()) -> None:
        unknown = sorted(set(self.data) - self.used - ignored)
        if unknown:
            raise ConfigError(
                f"{self.source}: {self.where or 'top level'}: unknown field(s) {', '.join(unknown)}; "
                "this is not an SA3 config we know how to build"
            )


def _int_list(section: _Section, key: str, default: Any = ..., length: int | None = None) -> tuple[int, ...]:
    value = section.get(key, default, (list, tuple))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise section.error(key, f"expected a list of integers, got {value!r}")
    if length is not None and len(value) != length:
        raise section.error(key, f"expected {length} value(s), got {len(value)}")
    return tuple(value)


# Training-only or informational keys that the official factory accepts and inference never reads.
_IGNORED_TOP = frozenset({"training", "audio_channels", "svd_bases_path", "demo", "dataset"})
_IGNORED_DIFFUSION = frozenset({"type", "distribution_shift_options", "modular_local_cond_configs"})
_IGNORED_DIT = frozenset({"transformer_type", "global_cond_type", "timestep_features_type", "checkpointing"})
_IGNORED_SAME = frozenset(
    {"checkpointing", "mask_noise", "freeze_backbone", "causal", "conformer", "layer_scale", "feat_scale"}
)


@dataclass(frozen=True)
class DiTConfig:
    """The diffusion transformer (``model.diffusion.config``)."""

    io_channels: int = 256
    patch_size: int = 1
    embed_dim: int = 1024
    depth: int = 20
    num_heads: int = 16
    cond_token_dim: int = 768
    global_cond_dim: int = 768
    local_add_cond_dim: int = 257
    timestep_features_dim: int = 256
    num_memory_tokens: int = 64
    differential: bool = False
    ff_mult: int = 4
    norm_force_fp32: bool = True

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def parse(cls, s: _Section) -> DiTConfig:
        cfg = cls(
            io_channels=s.get("io_channels", 256, int),
            patch_size=s.expect("patch_size", (1,), 1),
            embed_dim=s.get("embed_dim", types=int),
            depth=s.get("depth", types=int),
            num_heads=s.get("num_heads", types=int),
            cond_token_dim=s.get("cond_token_dim", 768, int),
            global_cond_dim=s.get("global_cond_dim", 768, int),
            local_add_cond_dim=s.get("local_add_cond_dim", 257, int),
            timestep_features_dim=s.get("timestep_features_dim", 256, int),
            num_memory_tokens=s.get("num_memory_tokens", 0, int),
        )
        s.expect("transformer_type", ("continuous_transformer",), "continuous_transformer")
        s.expect("global_cond_type", ("adaLN",), "adaLN")
        s.expect("timestep_features_type", ("expo",), "expo")
        s.expect("norm_type", ("rms_norm",), "rms_norm")
        s.expect("project_cond_tokens", (True,), True)
        s.expect("project_global_cond", (True,), True)
        s.expect("timestep_cond_type", ("global",), "global")
        s.expect("timestep_features_logsnr", (False,), False)
        s.expect("input_concat_dim", (0,), 0)
        s.expect("prepend_cond_dim", (0,), 0)
        attn = s.section("attn_kwargs", {})
        attn.expect("qk_norm", ("rms",), "rms")
        differential = attn.get("differential", False, bool)
        attn.finish()
        ff = s.section("ff_kwargs", {})
        ff_mult = ff.get("mult", 4, int)
        ff.finish()
        norm = s.section("norm_kwargs", {})
        force_fp32 = norm.get("force_fp32", False, bool)
        norm.finish()
        s.finish(_IGNORED_DIT)
        if cfg.embed_dim % cfg.num_heads:
            raise s.error("num_heads", f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}")
        if cfg.local_add_cond_dim != cfg.io_channels + 1:
            raise s.error("local_add_cond_dim", f"expected io_channels + 1 = {cfg.io_channels + 1} (mask + latents)")
        return cls(**{**cfg.__dict__, "differential": differential, "ff_mult": ff_mult, "norm_force_fp32": force_fp32})


@dataclass(frozen=True)
class SAMEConfig:
    """One side (encoder or decoder) of the SAME autoencoder.

    Exactly one attention layout is set: ``sliding_window`` (SAME-L, in latents each side) or
    ``chunk_size`` with ``chunk_midpoint_shift`` (SAME-S). ``chunk_size`` may also be present next to a
    sliding window: then it only sets the latent alignment in ``generate``.
    """

    io_channels: int  # 512 patch channels (encoder input / decoder output)
    channels: int
    c_mults: tuple[int, ...]
    strides: tuple[int, ...]
    latent_dim: int
    transformer_depths: tuple[int, ...]
    dim_heads: int = 64
    differential: bool = True
    variable_stride: bool = True
    conv_mapping: bool = False
    sliding_window: tuple[int, int] | None = None
    chunk_size: int | None = None
    chunk_midpoint_shift: bool = False
    sinusoidal_blocks: tuple[int, ...] = (0,)
    ff_mult: int = 3

    @property
    def width(self) -> int:
        return self.channels * self.c_mults[-1]

    @classmethod
    def parse(cls, s: _Section, side: str) -> SAMEConfig:
        io_key = "in_channels" if side == "encoder" else "out_channels"
        c_mults = _int_list(s, "c_mults")
        if len(c_mults) != 1:
            raise s.error("c_mults", "SA3 SAME uses exactly one resampling block")
        sliding = s.get("sliding_window", None)
        if sliding is not None:
            sliding = _int_list(s, "sliding_window", length=2)
        chunk_size = s.get("chunk_size", None, int)
        if sliding is None and chunk_size is None:
            raise s.error("chunk_size", "either sliding_window or chunk_size is required")
        cfg = cls(
            io_channels=s.get(io_key, types=int),
            channels=s.get("channels", types=int),
            c_mults=c_mults,
            strides=_int_list(s, "strides", length=1),
            latent_dim=s.get("latent_dim", types=int),
            transformer_depths=_int_list(s, "transformer_depths", length=1),
            dim_heads=s.get("dim_heads", 64, int),
            differential=s.get("differential", True, bool),
            variable_stride=s.expect("variable_stride", (True,), True),
            conv_mapping=s.get("conv_mapping", False, bool),
            sliding_window=sliding,
            chunk_size=chunk_size,
            chunk_midpoint_shift=s.get("chunk_midpoint_shift", False, bool),
            sinusoidal_blocks=_int_list(s, "sinusoidal_blocks", (0,), length=1) if side == "decoder" else (0,),
            ff_mult=s.get("ff_mult", 3, int),
        )
        s.expect("dyt", (True,), True)
        for flag in ("causal", "conformer", "layer_scale", "feat_scale", "freeze_backbone", "checkpointing"):
            s.expect(flag, (False,), False)
        s.expect("mask_noise", (0, 0.0), 0)
        s.finish(_IGNORED_SAME)
        if cfg.width % cfg.dim_heads:
            raise s.error("dim_heads", f"width {cfg.width} is not divisible by dim_heads {cfg.dim_heads}")
        return cfg


@dataclass(frozen=True)
class AutoencoderConfig:
    """The SAME autoencoder: patching, resampling transformer, SoftNorm bottleneck."""

    encoder: SAMEConfig
    decoder: SAMEConfig
    latent_dim: int = 256
    downsampling_ratio: int = 4096
    audio_channels: int = 2
    patch_size: int = 256
    soft_clip: bool = False
    sample_rate: int = 44100
    chunked: bool = True  # the official default for encode and decode inside SA3

    @property
    def sliding_window(self) -> tuple[int, int] | None:
        return self.decoder.sliding_window

    @property
    def latent_align(self) -> int:
        """Latents a generated length is rounded to (official ``_adapt_sample_size``)."""
        return (self.encoder.chunk_size or 32) // self.encoder.strides[0]

    @classmethod
    def parse(cls, s: _Section, sample_rate: int, chunked: bool) -> AutoencoderConfig:
        enc_block = s.section("encoder")
        enc_block.expect("type", ("same",))
        encoder = SAMEConfig.parse(enc_block.section("config"), "encoder")
        enc_block.finish()
        dec_block = s.section("decoder")
        dec_block.expect("type", ("same",))
        decoder = SAMEConfig.parse(dec_block.section("config"), "decoder")
        soft_clip = dec_block.get("soft_clip", False, bool)
        dec_block.finish()
        bottleneck = s.section("bottleneck")
        bottleneck.expect("type", ("softnorm",))
        bconf = bottleneck.section("config")
        latent_dim = bconf.get("dim", types=int)
        bconf.expect("auto_scale", (True,), True)
        bconf.expect("noise_regularize", (False,), False)
        bconf.expect("noise_augment_dim", (0,), 0)
        bconf.finish()
        bottleneck.finish()
        patched = s.section("pretransform")
        patched.expect("type", ("patched",))
        pconf = patched.section("config")
        channels = pconf.get("channels", types=int)
        patch_size = pconf.get("patch_size", types=int)
        pconf.finish()
        patched.finish()
        cfg = cls(
            encoder=encoder,
            decoder=decoder,
            latent_dim=s.get("latent_dim", latent_dim, int),
            downsampling_ratio=s.get("downsampling_ratio", types=int),
            audio_channels=s.get("io_channels", channels, int),
            patch_size=patch_size,
            soft_clip=soft_clip,
            sample_rate=sample_rate,
            chunked=chunked,
        )
        s.get("in_channels", None)
        s.get("out_channels", None)
        s.finish()
        _check_autoencoder(cfg, s)
        return cfg


def _check_autoencoder(cfg: AutoencoderConfig, s: _Section) -> None:
    if cfg.latent_dim != cfg.encoder.latent_dim or cfg.latent_dim != cfg.decoder.latent_dim:
        raise s.error("latent_dim", "encoder, decoder and bottleneck disagree on the latent size")
    if cfg.patch_size * cfg.audio_channels != cfg.encoder.io_channels:
        raise s.error("encoder.config.in_channels", "must equal patch_size x audio channels")
    if cfg.encoder.io_channels != cfg.decoder.io_channels:
        raise s.error("decoder.config.out_channels", "must equal the encoder's in_channels")
    if cfg.downsampling_ratio != cfg.patch_size * cfg.encoder.strides[0]:
        raise s.error("downsampling_ratio", "must equal patch_size x stride")
    if (cfg.encoder.sliding_window is None) != (cfg.decoder.sliding_window is None):
        raise s.error("decoder.config.sliding_window", "encoder and decoder must use the same attention layout")


@dataclass(frozen=True)
class PromptConditionerConfig:
    """T5Gemma prompt encoder; its weights live in a folder next to the config, not in the checkpoint."""

    max_length: int = 256
    padding_mode: str = "learned"
    subfolder: str | None = "t5gemma-b-b-ul2"
    repo_id: str | None = None
    model_path: str | None = None


@dataclass(frozen=True)
class NumberConditionerConfig:
    min_val: float = 0.0
    max_val: float = 384.0


@dataclass(frozen=True)
class ConditioningConfig:
    cond_dim: int = 768
    prompt: PromptConditionerConfig = field(default_factory=PromptConditionerConfig)
    seconds_total: NumberConditionerConfig = field(default_factory=NumberConditionerConfig)

    @classmethod
    def parse(cls, s: _Section) -> ConditioningConfig:
        cond_dim = s.get("cond_dim", types=int)
        prompt = seconds = None
        entries = s.get("configs", types=list)
        for i, raw in enumerate(entries):
            entry = _Section(raw, f"{s.where}.configs[{i}]", s.source)
            cid = entry.expect("id", ("prompt", "seconds_total"))
            conf = entry.section("config", {})
            if cid == "prompt":
                entry.expect("type", ("t5gemma",))
                prompt = PromptConditionerConfig(
                    max_length=conf.get("max_length", 128, int),
                    padding_mode=conf.expect("padding_mode", ("learned", "zero"), "zero"),
                    subfolder=conf.get("subfolder", None, str),
                    repo_id=conf.get("repo_id", None, str),
                    model_path=conf.get("model_path", None, str),
                )
                conf.expect("model_name", ("google/t5gemma-b-b-ul2",), "google/t5gemma-b-b-ul2")
                conf.expect("project_out", (False,), False)
                conf.expect("enable_grad", (False,), False)
                conf.get("output_dim", cond_dim)
            else:
                entry.expect("type", ("number",))
                seconds = NumberConditionerConfig(
                    min_val=float(conf.get("min_val", 0, (int, float))),
                    max_val=float(conf.get("max_val", 1, (int, float))),
                )
                conf.expect("fourier_features_type", ("expo",), "expo")
                conf.get("output_dim", cond_dim)
            conf.finish()
            entry.finish()
        if prompt is None or seconds is None:
            raise s.error("configs", "SA3 needs both a 'prompt' and a 'seconds_total' conditioner")
        s.get("default_keys", None)
        s.expect("pre_encoded_keys", ([], None), None)
        s.finish()
        if cond_dim != 768:
            raise s.error("cond_dim", "T5Gemma-b produces 768-dim embeddings")
        return cls(cond_dim=cond_dim, prompt=prompt, seconds_total=seconds)


@dataclass(frozen=True)
class Recommendation:
    """How the official docs and interface sample a model by default (what ``generate`` uses when the
    caller leaves steps, cfg_scale or the sampler unset)."""

    steps: int
    cfg_scale: float
    sampler: str


RECOMMENDATIONS: Mapping[str, Recommendation] = {
    "rf_denoiser": Recommendation(steps=8, cfg_scale=1.0, sampler="pingpong"),  # post-trained (distilled)
    "rectified_flow": Recommendation(steps=50, cfg_scale=7.0, sampler="euler"),  # the -base models
}
"""Per ``diffusion_objective``: the objectives SA3 models are trained with, and how to sample each."""


@dataclass(frozen=True)
class ModelConfig:
    """One SA3 model: DiT, SAME autoencoder and conditioners, as the official JSON describes it."""

    dit: DiTConfig
    autoencoder: AutoencoderConfig
    conditioning: ConditioningConfig
    diffusion_objective: str = "rf_denoiser"
    sample_rate: int = 44100
    sample_size: int = 5292032
    model_type: str = "diffusion_cond_inpaint"
    sampling_shift: dict | None = None
    source: str = "<dict>"
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the JSON it was parsed from

    @property
    def variant(self) -> str:
        """'medium' (differential DiT, SAME-L) or 'small'."""
        return "medium" if self.dit.differential else "small"

    @property
    def is_base(self) -> bool:
        return self.diffusion_objective == "rectified_flow"

    @property
    def recommended(self) -> Recommendation:
        return RECOMMENDATIONS[self.diffusion_objective]

    @property
    def max_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> ModelConfig:
        top = _Section(data, "", source)
        model_type = top.expect("model_type", ("diffusion_cond_inpaint", "diffusion_cond"))
        sample_rate = top.expect("sample_rate", (44100,))
        sample_size = top.get("sample_size", types=int)
        model = top.section("model")
        io_channels = model.get("io_channels", types=int)
        pre = model.section("pretransform")
        pre.expect("type", ("autoencoder",), "autoencoder")
        pre.expect("iterate_batch", (False, True), False)
        autoencoder = AutoencoderConfig.parse(pre.section("config"), sample_rate, pre.get("chunked", False, bool))
        pre.finish()
        conditioning = ConditioningConfig.parse(model.section("conditioning"))
        diff = model.section("diffusion")
        objective = diff.expect("diffusion_objective", tuple(RECOMMENDATIONS))
        diff.expect("cross_attention_cond_ids", (["prompt", "seconds_total"],))
        diff.expect("global_cond_ids", (["seconds_total"],))
        diff.expect("local_add_cond_ids", (["inpaint_mask", "inpaint_masked_input"],))
        diff.expect("input_concat_ids", ([], None), None)
        diff.expect("prepend_cond_ids", ([], None), None)
        diff.get("mask_padding_attention", True, bool)  # generate() forces it on
        diff.get("use_effective_length_for_schedule", True, bool)  # likewise
        shift = diff.get("sampling_distribution_shift_options", None, (dict, type(None)))
        dit = DiTConfig.parse(diff.section("config"))
        diff.finish(_IGNORED_DIFFUSION)
        model.finish()
        top.finish(_IGNORED_TOP)
        if dit.io_channels != io_channels or autoencoder.latent_dim != io_channels:
            raise ConfigError(f"{source}: model.io_channels {io_channels} disagrees with the DiT or the autoencoder")
        if sample_size % autoencoder.downsampling_ratio:
            raise ConfigError(
                f"{source}: sample_size {sample_size} is not a multiple of {autoencoder.downsampling_ratio}"
            )
        return cls(
            dit=dit,
            autoencoder=autoencoder,
            conditioning=conditioning,
            diffusion_objective=objective,
            sample_rate=sample_rate,
            sample_size=sample_size,
            model_type=model_type,
            sampling_shift=shift,
            source=source,
            raw=json.loads(json.dumps(data)),  # a plain deep copy: later edits of ``data`` do not leak in
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: model config not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a valid JSON model config ({exc})") from None
        return cls.from_dict(data, source=str(path))


def autoencoder_config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> AutoencoderConfig:
    """A standalone SAME config (``{"sample_rate": 44100, "model": {encoder, decoder, ...}}``)."""
    top = _Section(data, "", source)
    sample_rate = top.expect("sample_rate", (44100,))
    top.get("model_type", None)
    top.get("sample_size", None)
    top.get("audio_channels", None)
    cfg = AutoencoderConfig.parse(top.section("model"), sample_rate, chunked=True)
    top.finish(_IGNORED_TOP)
    return cfg
