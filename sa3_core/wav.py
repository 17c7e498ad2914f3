"""Minimal WAV reading and writing for the CLI, with no dependency beyond torch.

torchaudio 2.9 hands file I/O to the optional torchcodec package; ComfyUI brings its own audio I/O. The CLI
only needs WAV, so it reads PCM 8/16/24/32-bit and IEEE float 32/64 (WAVE_FORMAT_EXTENSIBLE included) and
writes 16-bit PCM or 32-bit float. Writes go to a temporary file that is renamed at the end: an interrupted
run never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import torch

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class WavError(ValueError):
    pass


def read_wav(path: str | Path) -> tuple[int, torch.Tensor]:
    """``(sample_rate, audio (channels, samples) float32 in [-1, 1])``."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(f"{path}: not a WAV file (only .wav is supported here)")
    fmt = None
    samples = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise WavError(f"{path}: truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            samples = body
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise WavError(f"{path}: missing fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise WavError(f"{path}: invalid header ({channels} channels, {rate} Hz)")
    width = bits // 8
    usable = len(samples) - len(samples) % (width * channels)
    raw = samples[:usable]
    if tag == _FLOAT and bits in (32, 64):
        audio = torch.frombuffer(bytearray(raw), dtype=torch.float32 if bits == 32 else torch.float64).float()
    elif tag == _PCM and bits == 8:
        audio = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).float() - 128) / 128
    elif tag == _PCM and bits == 16:
        audio = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768
    elif tag == _PCM and bits == 24:
        b = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 3).int()
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        audio = torch.where(value >= 2**23, value - 2**24, value).float() / 2**23
    elif tag == _PCM and bits == 32:
        audio = torch.frombuffer(bytearray(raw), dtype=torch.int32).float() / 2**31
    else:
        raise WavError(f"{path}: unsupported WAV encoding (format {tag}, {bits} bits)")
    return rate, audio.view(-1, channels).t().contiguous()


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int, *, float32: bool = False) -> Path:
    """Write (channels, samples) audio atomically; 16-bit PCM (clipped to [-1, 1]) or 32-bit float."""
    path = Path(path)
    audio = audio.detach().float().cpu()
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise WavError(f"expected (channels, samples) audio, got shape {tuple(audio.shape)}")
    channels = audio.shape[0]
    if float32:
        payload, tag, bits = audio.t().contiguous().numpy().tobytes(), _FLOAT, 32
    else:
        pcm = (audio * 32768).round().clamp(-32768, 32767).to(torch.int16)  # read back as / 32768
        payload, tag, bits = pcm.t().contiguous().numpy().tobytes(), _PCM, 16
    block = channels * bits // 8
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, sample_rate, sample_rate * block, block, bits)
    header += b"data" + struct.pack("<I", len(payload))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")  # same folder: the rename is atomic
    try:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
