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
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title, *("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)]
    counts = report["counts"]
    lines.append("images: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "; raw cosine (torchmetrics: 100*max(cos,0))")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


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
