"""The metrics report: a JSON document (means, std, per-image values, backbones, settings) and a text table."""

import datetime
import json
import os
import pathlib
import tempfile

from .formulas import torchmetrics_scale

FORMAT = "driftless.metrics.v1"
DEFINITIONS = {
    "dino": "mean over generated images i and reference images j of cos(DINO CLS(g_i), DINO CLS(r_j))",
    "clip_i": "mean over generated images i and reference images j of cos(CLIP image(g_i), CLIP image(r_j))",
    "clip_t": "mean over generated images i of cos(CLIP image(g_i), CLIP text(prompt_i with the identifier removed "
              "or replaced by the class noun))",
    "drift_clip_i": "mean over pairs i of cos(CLIP image(base_i), CLIP image(personalized_i)), same seed and prompt",
    "drift_dino": "mean over pairs i of cos(DINO CLS(base_i), DINO CLS(personalized_i)), same seed and prompt",
}


def build_report(kind: str, result, counts: dict, settings: dict | None = None) -> dict:
    """A JSON-ready dict of a MetricsResult. `kind` is 'personalization' or 'drift'."""
    metrics = {}
    for key, scores in result.scores.items():
        definition = DEFINITIONS[key if kind == "personalization" else f"drift_{key}"]
        entry = {"name": scores.name, **scores.summary, "backbone": scores.backbone, "definition": definition,
                 ("per_pair" if kind == "drift" else "per_image"): scores.values}
        if key == "clip_t":
            per_image = [torchmetrics_scale(v) for v in scores.values]
            entry["torchmetrics_clip_score"] = sum(per_image) / len(per_image)
        metrics[key] = entry
    report = {
        "format": FORMAT,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "scale": "raw cosine similarity in [-1, 1]; std is the sample std (n - 1) over per-image (per-pair) values",
        "counts": counts,
        "metrics": metrics,
        "backbones": result.backbones,
        "settings": settings or {},
        "notes": list(result.notes),
    }
    if result.prompts:
        report["prompts"] = result.prompts
    if result.clip_prompts:
        report["clip_t_prompts"] = result.clip_prompts
    return report


def table(report: dict) -> str:
    """The metrics as aligned text, one row per metric: mean, std, min, max, n, backbone."""
    title = "Personalization metrics" if report["kind"] == "personalization" else "Drift (base vs personalized, same seeds)"
    rows = [("metric", "mean", "std", "min", "max", "n", "backbone")]
    for entry in report["metrics"].values():
        rows.append((entry["name"], f"{entry['mean']:.4f}", f"{entry['std']:.4f}", f"{entry['min']:.4f}",
                     f"{entry['max']:.4f}", str(entry["n"]), entry["backbone"]))
    lines = [title, *aligned_lines(rows)]
    counts = report["counts"]
    lines.append("images: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "; raw cosine (torchmetrics: 100*max(cos,0))")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def aligned_lines(rows) -> list[str]:
    """Rows of cells as text lines, each column padded to its widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def write_json_atomic(data: dict, path: pathlib.Path) -> pathlib.Path:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def table_image(report: dict, scale: int = 2):
    """The table as an IMAGE [1, H, W, 3] (PIL's built-in font, columns aligned), for the node's preview in the UI."""
    lines = table(report).splitlines()
    title, header, rows, footer = lines[0], lines[1], lines[2:2 + len(report["metrics"])], lines[2 + len(report["metrics"]):]
    return cells_image(title, [header.split()] + [_cells(r) for r in rows], footer, scale)


def cells_image(title: str, cells: list[list[str]], footer: list[str], scale: int = 2):
    """A table as an IMAGE [1, H, W, 3]: a title, a header row (shaded) and rows whose cells between the first and
    the last are right-aligned (numbers), then footer lines in gray."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = lambda text: int(measure.textlength(text, font=font))  # noqa: E731
    pad, line_h = 8, 16
    columns = [max(width(row[i]) for row in cells) + 2 * pad for i in range(len(cells[0]))]
    body_w = sum(columns)
    total_w = max([body_w] + [width(t) for t in [title, *footer]]) + 2 * pad
    total_h = line_h * (len(cells) + len(footer) + 1) + 3 * pad
    img = Image.new("RGB", (total_w, total_h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    y = pad + line_h + pad // 2
    for r, row in enumerate(cells):
        if r == 0:
            draw.rectangle([pad, y - 2, pad + body_w, y + line_h - 2], fill=(230, 236, 245))
        x = pad
        for i, text in enumerate(row):
            right = 0 < i < len(row) - 1  # numbers right-aligned
            draw.text((x + (columns[i] - pad - width(text) if right else pad), y), text, fill=(0, 0, 0), font=font)
            x += columns[i]
        y += line_h
    for text in footer:
        draw.text((pad, y + pad // 2), text, fill=(90, 90, 90), font=font)
        y += line_h
    img = img.resize((total_w * scale, total_h * scale), Image.NEAREST)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def _cells(row: str) -> list[str]:
    """A table row's cells: metric name, five numbers, then the backbone name (which may contain spaces)."""
    parts = row.split()
    return [parts[0], *parts[1:6], " ".join(parts[6:])]
