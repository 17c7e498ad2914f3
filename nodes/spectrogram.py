"""SA3_Spectrogram: AUDIO -> IMAGE, one labelled spectrogram picture per batch item.

The levels and colours come from ``sa3_core.spectrogram``; this module only draws the frame around them
(axes, tick labels, a caption) with Pillow, which ComfyUI itself requires.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw, ImageFont

from ..sa3_core.spectrogram import SCALES, Spectrogram, colorize, spectrogram
from .common import CATEGORY

BACKGROUND = (24, 24, 27)
INK = (220, 220, 225)
FONT_SIZE = 16
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 18, 30, 48
TICK = 5


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)  # scalable (Pillow >= 10.1 with FreeType)
    except TypeError:
        return ImageFont.load_default()


def _draw_frame(plot: np.ndarray, spec: Spectrogram, caption: str) -> np.ndarray:
    """The plot (H, W, 3 uint8) inside a frame with frequency ticks (left), time ticks (bottom), a caption."""
    height, width = plot.shape[:2]
    canvas = Image.new("RGB", (MARGIN_LEFT + width + MARGIN_RIGHT, MARGIN_TOP + height + MARGIN_BOTTOM), BACKGROUND)
    canvas.paste(Image.fromarray(plot), (MARGIN_LEFT, MARGIN_TOP))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    left, top, right, bottom = MARGIN_LEFT, MARGIN_TOP, MARGIN_LEFT + width - 1, MARGIN_TOP + height - 1
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=INK)
    last_y = None
    for fraction, label in sorted(spec.frequency_ticks(), reverse=True):  # top down
        y = round(bottom - fraction * (height - 1))
        if last_y is not None and y - last_y < FONT_SIZE:
            continue  # too close to the label above (low mel ticks on a short plot)
        last_y = y
        draw.line((left - 1 - TICK, y, left - 1, y), fill=INK)
        draw.text((left - 3 - TICK, y), label, fill=INK, font=font, anchor="rm")
    last_x = None
    for fraction, label in spec.time_ticks(max_ticks=max(2, width // 80)):
        x = round(left + fraction * (width - 1))
        if last_x is not None and x - last_x < FONT_SIZE * 3:
            continue
        last_x = x
        draw.line((x, bottom + 1, x, bottom + 1 + TICK), fill=INK)
        draw.text((x, bottom + 3 + TICK), label, fill=INK, font=font, anchor="mt")
    draw.text((left - 3 - TICK, bottom + 3 + TICK), "Hz", fill=INK, font=font, anchor="rt")
    draw.text((right, bottom + 3 + TICK + FONT_SIZE + 2), "time (s)", fill=INK, font=font, anchor="rt")
    draw.text((left, top - 5), caption, fill=INK, font=font, anchor="ls")
    return np.asarray(canvas)


class SA3Spectrogram(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SA3_Spectrogram",
            display_name="Stable Audio 3 Spectrogram",
            category=f"{CATEGORY}/audio",
            description=(
                "A picture of any AUDIO's spectrum over time (one image per batch item, time in seconds and "
                "frequency in Hz labelled), for Preview Image or Save Image. Levels are absolute: 0 dB is a "
                "full-scale sine, so pictures of different clips compare; channels are averaged."
            ),
            inputs=[
                io.Audio.Input("audio", tooltip="Any audio: the VAE Decode output, a Load Audio clip, ..."),
                io.Combo.Input(
                    "frequency_scale",
                    options=list(SCALES),
                    default="mel",
                    tooltip=(
                        "mel: 128 mel bands from 20 Hz (more room for low and middle frequencies, as we hear them). "
                        "linear: every FFT bin from 0 Hz to Nyquist."
                    ),
                ),
                io.Float.Input(
                    "dynamic_range_db",
                    default=80.0,
                    min=10.0,
                    max=200.0,
                    step=1.0,
                    tooltip=("Levels from 0 dB (brightest) down to minus this many dB (black)."),
                ),
                io.Int.Input(
                    "width",
                    default=1024,
                    min=64,
                    max=4096,
                    step=8,
                    tooltip=("Width of the plot in pixels (the whole clip; labels add a margin)."),
                ),
                io.Int.Input(
                    "height",
                    default=256,
                    min=32,
                    max=2048,
                    step=8,
                    tooltip=("Height of the plot in pixels (labels add a margin)."),
                ),
            ],
            outputs=[
                io.Image.Output(
                    display_name="image", tooltip=("One labelled spectrogram per batch item (IMAGE batch).")
                ),
            ],
        )

    @classmethod
    def execute(
        cls, audio, frequency_scale: str = "mel", dynamic_range_db: float = 80.0, width: int = 1024, height: int = 256
    ) -> io.NodeOutput:
        if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
            raise ValueError("Spectrogram: audio is not an AUDIO value (expected waveform and sample_rate)")
        waveform = audio["waveform"]
        spec = spectrogram(
            waveform, int(audio["sample_rate"]), scale=frequency_scale, width=width, dynamic_range_db=dynamic_range_db
        )
        plots = (colorize(spec, width, height) * 255).round().to(torch.uint8).numpy()
        kind = "log-mel" if frequency_scale == "mel" else "log-magnitude"
        images = []
        for b, plot in enumerate(plots):
            item = f"item {b + 1} of {len(plots)}   " if len(plots) > 1 else ""
            caption = f"{item}{kind}, {spec.sample_rate / 1000:g} kHz, 0 to -{dynamic_range_db:g} dB"
            images.append(torch.from_numpy(_draw_frame(plot, spec, caption).copy()))
        return io.NodeOutput(torch.stack(images).float() / 255.0)
