"""The sweep's summary: per grid point (every axis but the replicate one, e.g. the seed), each metric's mean over the
replicates with a percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13: resample the replicates with
replacement, take the mean, read the interval off the quantiles), via scipy.stats.bootstrap."""

import numpy as np

from .spec import value_label

SECONDS = "job seconds"  # each job's wall time in its worker (ComfyUI's start-up included for a worker's first job)


def bootstrap_interval(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0, statistic=np.mean):
    """(low, high) of the percentile bootstrap of `statistic` (the mean by default); None for fewer than 2 values.
    Seeded: reruns agree."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        return None
    if np.all(data == data[0]):  # every resample has the same statistic
        return float(data[0]), float(data[0])
    res = bootstrap((data,), statistic, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def group_label(axes: dict, replicate: str) -> str:
    return " ".join(f"{a}={value_label(v)}" for a, v in axes.items() if a != replicate) or "(all)"


def summarize(results: dict[str, dict], replicate: str = "seed", confidence: float = 0.95, resamples: int = 2000,
              order: list[str] | None = None) -> list[dict]:
    """One row per (grid point, metric): n replicates, mean, interval; grid points in the order of `order` (job keys;
    default sorted). `results`: key -> a job's result.json; each key counts once, whatever attempts it took."""
    groups: dict[str, list[dict]] = {}
    for key in [k for k in (order or sorted(results)) if k in results]:
        r = results[key]
        groups.setdefault(group_label(r["axes"], replicate), []).append(r)
    rows = []
    for label, members in groups.items():
        names = sorted({m for r in members for m in r.get("metrics", {})})
        for name in names + [SECONDS]:
            values = [r["seconds"] if name == SECONDS else r["metrics"][name] for r in members
                      if name == SECONDS or name in r.get("metrics", {})]
            interval = bootstrap_interval(values, confidence, resamples)
            rows.append({"group": label, "metric": name, "n": len(values), "mean": float(np.mean(values)),
                         "low": interval[0] if interval else None, "high": interval[1] if interval else None})
    return rows


def markdown(rows: list[dict], failures: dict[str, dict], confidence: float = 0.95) -> str:
    pct = f"{confidence:.0%}"
    lines = [f"| grid point | metric | n | mean | {pct} bootstrap interval |", "|---|---|---|---|---|"]
    for r in rows:
        interval = f"{r['low']:.4g} – {r['high']:.4g}" if r["low"] is not None else "— (n < 2)"
        lines.append(f"| {r['group']} | {r['metric']} | {r['n']} | {r['mean']:.4g} | {interval} |")
    if failures:
        lines += ["", f"Failed jobs ({len(failures)}):", "", "| key | job | attempts | error |", "|---|---|---|---|"]
        for key, f in sorted(failures.items()):
            error = " ".join(str(f.get("error", "")).split())[:300].replace("|", "\\|")
            lines.append(f"| {key} | {f.get('label', '')} | {f.get('attempts', '?')} | {error} |")
    return "\n".join(lines) + "\n"


def write_summary(store, replicate: str, keys: list[str], confidence: float = 0.95) -> tuple[list[dict], str]:
    """summary.json and summary.md in the results folder: the sweep's jobs (`keys`, in grid order) that are committed,
    and those of them whose last run failed."""
    from ..metrics.report import write_json_atomic

    finished = {k: v for k, v in store.finished().items() if k in keys}
    failures = {k: v for k, v in store.failures().items() if k in keys}
    rows = summarize(finished, replicate, confidence, order=keys)
    text = markdown(rows, failures, confidence)
    write_json_atomic({"replicate": replicate, "confidence": confidence, "jobs": len(finished), "rows": rows,
                       "failed": failures}, store.root / "summary.json")
    tmp = store.root / "summary.md.tmp"
    tmp.write_text(text)
    tmp.replace(store.root / "summary.md")
    return rows, text
