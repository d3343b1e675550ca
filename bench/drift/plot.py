"""The fidelity-vs-drift plot, drawn with Pillow (no plotting library in the environment)."""

import pathlib

from PIL import Image, ImageDraw

COLOURS = {"plain LoRA": (0, 0, 0), "parameter anchor": (31, 119, 180), "DCO": (44, 160, 44), "APT": (214, 39, 40),
           "prior preservation": (148, 103, 189)}


def colour_of(name: str) -> tuple[int, int, int]:
    """A method's colour; a variant ("DCO, beta 250") takes its regularizer's."""
    return next((c for key, c in COLOURS.items() if name == key or name.startswith(key + ",")), (128, 128, 128))


def fidelity_vs_drift(out: dict, path: pathlib.Path, x_key="subject_fidelity", y_key="prior_rmse_to_base") -> pathlib.Path:
    R = max(180, 45 + 6 * max(len(name) for name in out["curves"]))  # room for the legend's longest name
    W, H, L, T, B = 460 + R, 440, 70, 30, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    points = [(s[x_key], s[y_key]) for c in out["curves"].values() for s in c]
    points += [(s[x_key], s[y_key]) for by_mode in out["results"].values() for s in by_mode.values()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(ys) * 1.05 or 1.0
    x0, x1 = (x0 - 0.02, x1 + 0.02) if x1 > x0 else (x0 - 0.1, x0 + 0.1)
    px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)  # noqa: E731
    d.rectangle([L, T, W - R, H - B], outline=(0, 0, 0))
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        d.text((px(xv) - 12, H - B + 4), f"{xv:.2f}", fill=(0, 0, 0))
        d.text((L - 40, py(yv) - 6), f"{yv:.3f}", fill=(0, 0, 0))
    d.text((L + 120, H - 20), f"{x_key.replace('_', ' ')} (higher = closer to the subject)", fill=(0, 0, 0))
    d.text((4, 8), f"{y_key.replace('_', ' ')} (prior drift, lower = better)", fill=(0, 0, 0))
    for k, (name, curve) in enumerate(out["curves"].items()):
        colour = colour_of(name)
        pts = [(px(s[x_key]), py(s[y_key])) for s in curve]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        for mode, s in out["results"][name].items():
            x, y = px(s[x_key]), py(s[y_key])
            if mode == "autoguidance":  # a hollow triangle
                d.polygon([(x, y - 6), (x - 6, y + 5), (x + 6, y + 5)], outline=colour)
            elif mode != "CFG":  # personalization guidance: a hollow square
                d.rectangle([x - 5, y - 5, x + 5, y + 5], outline=colour, width=2)
        d.line([W - R + 10, T + 12 + 18 * k, W - R + 30, T + 12 + 18 * k], fill=colour, width=3)
        d.text((W - R + 35, T + 6 + 18 * k), name, fill=(0, 0, 0))
    base = out["results"].get("base model", {}).get("CFG")
    if base:
        x, y = px(base[x_key]), py(base[y_key])
        d.line([x - 6, y, x + 6, y], fill=(128, 128, 128), width=2)
        d.line([x, y - 6, x, y + 6], fill=(128, 128, 128), width=2)
    n = len(out["curves"])
    d.text((W - R + 10, T + 12 + 18 * n), "dots: CFG along training", fill=(0, 0, 0))
    d.text((W - R + 10, T + 30 + 18 * n), "squares: pers. guidance", fill=(0, 0, 0))
    d.text((W - R + 10, T + 48 + 18 * n), "triangles: autoguidance", fill=(0, 0, 0))
    d.text((W - R + 10, T + 66 + 18 * n), "+: base model", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
