"""AutoencoderModel: the SAME autoencoder on its own, with the official ``stable_audio_3.AutoencoderModel`` API.

    ae = AutoencoderModel.from_pretrained("same-s")      # or "same-l", or a folder / .safetensors file
    latents = ae.encode(waveform, sr)                     # (C, T) clip, a list of clips, or a (B, C, T) batch
    audio = ae.decode(latents)                            # (B, 2, samples), 44.1 kHz

``same-s`` / ``same-l`` resolve offline as the official ``AutoencoderModelConfig.resolve``: the SAME part of a
cached SA3 model holding it (small-music, small-sfx / medium), else the standalone ``stabilityai/SAME-S`` /
``SAME-L`` repository (sa3_core.hub). ``ae.autoencoder`` is the :class:`~sa3_core.same.SAMEAutoencoder` with
the official entry points (``preprocess_audio_for_encoder``, ``preprocess_audio_list_for_encoder``,
``encode_audio``, ``decode_audio``, ``io_channels``, ``downsampling_ratio``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import hub
from .checkpoint import load_autoencoder
from .pipeline import default_device
from .precision import autoencoder_dtype
from .same import SAMEAutoencoder


class AutoencoderModel:
    def __init__(self, autoencoder: SAMEAutoencoder, sample_rate: int, device: torch.device | str):
        self.autoencoder = autoencoder
        self.sample_rate = sample_rate
        self.device = torch.device(device)

    @staticmethod
    def from_pretrained(
        model_name_or_path: str | Path,
        device: torch.device | str | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        models_dir: str | Path | None = None,
        attention_backend: str = "auto",
    ) -> AutoencoderModel:
        """Load ``same-s`` / ``same-l`` (offline, see the module docs), a SAME or SA3 folder, or a file.
        ``device`` defaults to cuda -> mps -> cpu; ``dtype`` to float32 as the official code (on MPS bf16
        becomes float32: sa3_core.precision)."""
        device = torch.device(device) if device is not None else default_device()
        path = hub.resolve_autoencoder(model_name_or_path, models_dir=models_dir)
        loaded = load_autoencoder(
            path, device=device, dtype=autoencoder_dtype(device, dtype), attention_backend=attention_backend
        )
        return AutoencoderModel(loaded.autoencoder, loaded.config.sample_rate, device)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    @torch.inference_mode()
    def encode(
        self,
        audio: torch.Tensor | list[torch.Tensor],
        sr: int | list[int],
        chunked: bool = False,
        chunk_size: int = 128,
        overlap: int = 32,
    ) -> torch.Tensor:
        """Audio -> latents (B, 256, latent frames). ``audio``: one clip (C, T), a list of clips (``sr`` one
        rate or one per clip) or a (B, C, T) batch; resampled, channel-fitted and zero-padded to whole
        latents first. ``chunked``: overlapping chunks of ``chunk_size`` latents (bounded memory)."""
        if isinstance(audio, torch.Tensor) and audio.ndim == 3:
            audio = list(audio)
        clips = audio if isinstance(audio, list) else [audio]
        batch = self.autoencoder.preprocess_audio_list_for_encoder(clips, sr)
        return self.autoencoder.encode_audio(
            batch.to(device=self.device, dtype=self._dtype), chunked=chunked, chunk_size=chunk_size, overlap=overlap
        )

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, chunked: bool = False, chunk_size: int = 128, overlap: int = 32
    ) -> torch.Tensor:
        """Latents (B, 256, L) -> audio (B, 2, 4096 L) in the autoencoder's dtype (not clipped, as official)."""
        return self.autoencoder.decode_audio(
            latents.to(device=self.device, dtype=self._dtype), chunked=chunked, chunk_size=chunk_size, overlap=overlap
        )
