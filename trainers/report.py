"""The training report's loss plot, drawn with PIL (no plotting library): an IMAGE tensor [1, H, W, 3]."""

import math

import numpy as np
import torch
from PIL import Image, ImageDraw


def moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def loss_plot(losses: list[float], width: int = 640, height: int = 360, title: str = "training loss") -> torch.Tensor:
    """Per-step loss (grey) and its moving average (blue) against the step, on a linear axis."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, width - 20, 30, height - 40
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    draw.text((left, 8), f"{title} ({len(losses)} steps)", fill=(0, 0, 0))
    finite = [v for v in losses if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        n = max(1, len(losses) - 1)

        def xy(i, v):
            return left + (right - left) * i / n, bottom - (bottom - top) * (v - lo) / (hi - lo)

        for series, colour in ((losses, (170, 170, 170)), (moving_average(losses, max(2, len(losses) // 10)), (30, 90, 200))):
            points = [xy(i, v) for i, v in enumerate(series) if math.isfinite(v)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            elif points:
                draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        draw.text((4, top), f"{hi:.4g}", fill=(0, 0, 0))
        draw.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
        draw.text((left, bottom + 8), "1", fill=(0, 0, 0))
        draw.text((right - 30, bottom + 8), str(len(losses)), fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
