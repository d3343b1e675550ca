"""The drift benchmark's jobs, subjects and statistics: pure Python/numpy/torch, no ComfyUI.

A job is one LoRA training, described completely by a (subject, method, knobs, seed) record; its content key
(a hash of that record) names its result, so jobs can run in any order, in any process, and be cached.
`expand` turns the command line's choices into the grid of jobs; `summarise` turns the results into figures
with percentile-bootstrap 95% intervals (Efron & Tibshirani 1993, ch. 13) that resample the (subject, seed)
units; `matched_ratio` compares a method's drift with plain LoRA's at the same subject fidelity.
"""

import dataclasses

import numpy as np
import torch

from ...shapes import dataset, metrics

# --- subjects: shapes, colours and surface patterns the pretraining never showed together ----------------------

PATTERNS = ("solid", "stripes", "dots")


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    shape: str  # one of dataset.shape_mask's shapes
    colour: tuple[float, float, float]
    pattern: str = "solid"  # solid, stripes (horizontal, every other 2 pixels darker), dots (a 4-pixel grid of dark dots)

    def describe(self) -> str:
        return f"subject {self.name}: {self.shape}, rgb {self.colour}, {self.pattern}"

    def render(self, n: int, seed: int) -> torch.Tensor:
        """n pictures [n, 32, 32, 3] of the subject on white at seeded random sizes and positions."""
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        rng = np.random.default_rng(seed)
        rows, cols = np.mgrid[0:dataset.SIZE, 0:dataset.SIZE]
        dark = {"solid": np.zeros_like(rows, bool), "stripes": (rows // 2) % 2 == 1,
                "dots": (rows % 4 == 1) & (cols % 4 == 1)}[self.pattern][..., None]
        colour = np.asarray(self.colour, np.float32)
        surface = np.where(dark, colour * 0.35, colour).astype(np.float32)
        out = []
        for _ in range(n):
            side, centre = dataset.draw_layout(rng)
            m = dataset.shape_mask(self.shape, side, centre)[..., None]
            out.append(m * surface + (1 - m) * np.asarray(dataset.BACKGROUNDS["white"], np.float32))
        return torch.from_numpy(np.stack(out).astype(np.float32))


SUBJECTS = {s.name: s for s in (
    Subject("orange-cross", "cross", (1.0, 0.5, 0.0)),
    Subject("purple-cross-stripes", "cross", (0.55, 0.15, 0.7), "stripes"),
    Subject("cyan-square", "square", (0.1, 0.8, 0.85)),
    Subject("orange-circle-stripes", "circle", (1.0, 0.5, 0.0), "stripes"),
    Subject("magenta-triangle-dots", "triangle", (0.9, 0.1, 0.7), "dots"),
    Subject("teal-cross-dots", "cross", (0.0, 0.5, 0.5), "dots"),
)}


# --- jobs ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    subject: str
    method: str
    seed: int
    knobs: tuple = ()  # sorted (name, value) pairs: steps, checkpoints, rank, learning_rate, guidance, ...

    @property
    def knob(self) -> dict:
        return dict(self.knobs)

    def record(self) -> dict:
        """The job as plain JSON-able data (what a remote worker receives)."""
        return {"subject": self.subject, "method": self.method, "seed": self.seed, "knobs": self.knob}

    @property
    def key(self) -> str:
        """Content key (the sweeps' sweeps.spec.content_key): the same record gives the same key on every machine."""
        from ...sweeps.spec import content_key

        return content_key(self.record())


def expand(subjects, methods, seeds, knobs: dict, guidance_methods=("plain LoRA",)) -> list[Job]:
    """Every (subject, method, seed) with the same knobs; `guidance=True` in the knobs of the methods named in
    guidance_methods (their last checkpoint is also sampled with personalization guidance and autoguidance)."""
    for s in subjects:
        if s not in SUBJECTS:
            raise ValueError(f"unknown subject {s!r}: choose from {sorted(SUBJECTS)}")
    jobs = []
    for subject in subjects:
        for method in methods:
            for seed in seeds:
                k = {**knobs, "guidance": method in guidance_methods}
                jobs.append(Job(subject, method, int(seed), tuple(sorted(k.items()))))
    return jobs


# --- statistics ----------------------------------------------------------------------------------------------


def bootstrap_mean(values, resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` (one per independent unit, here a (subject, seed) pair) and its
    percentile-bootstrap 95% interval (Efron & Tibshirani 1993, ch. 13): the units are drawn with replacement
    `resamples` times and the 2.5th and 97.5th percentiles of the resampled means are taken. Seeded: the same
    values give the same interval."""
    from ...sweeps.summary import bootstrap_interval

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    interval = bootstrap_interval(x, resamples=resamples, seed=seed)  # scipy.stats.bootstrap, percentile method
    low, high = interval if interval is not None else (x.mean(), x.mean())  # one unit: no spread to resample
    return float(x.mean()), float(low), float(high)


def ratio_of_means(values, references, resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): sum(values)/sum(references), e.g. a method's summed subject-fidelity gain over plain LoRA's
    on the same (subject, seed) units, with the percentile-bootstrap 95% interval that resamples the units in pairs
    (scipy.stats.bootstrap, paired). Seeded."""
    from scipy.stats import bootstrap

    x, y = np.asarray(values, dtype=np.float64), np.asarray(references, dtype=np.float64)
    ratio = float(x.sum() / y.sum())
    if x.size < 2:
        return ratio, ratio, ratio
    res = bootstrap((x, y), lambda a, b, axis=-1: a.sum(axis=axis) / b.sum(axis=axis), paired=True, vectorized=True,
                    n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    return ratio, float(res.confidence_interval.low), float(res.confidence_interval.high)


def pixel_drift(scores: dict) -> float:
    """A checkpoint's drift as the benchmark reads it: prior samples' pixel RMSE to the base model's."""
    return scores["prior_rmse_to_base"]


def feature_drift(scores: dict) -> float:
    """The same drift read from the classifier's features: 1 − the prior samples' cosine similarity to the base's."""
    return 1 - scores["prior_similarity_to_base"]


NEAR_BASE_PIXELS, NEAR_BASE_FEATURES = 0.02, 1e-3  # below these plain LoRA's point is the base model's: no ratio


def matched_drift_ratio(units: dict, plain: dict, drift, resamples: int = 4000,
                        near_base: float = NEAR_BASE_PIXELS) -> dict:
    """Per (subject, seed) unit of a method (`units`: unit -> result), its drift at the last checkpoint over plain
    LoRA's at the same subject fidelity (matched_ratio along plain LoRA's curve for that unit, from the base model on),
    `drift(scores)` reading a checkpoint's drift: {"ratio": bootstrap_mean of the ratios or None, "n", "unmatched"}."""
    ratios, missing = [], 0
    for unit, r in units.items():
        if unit not in plain:
            continue
        curve = [(plain[unit]["base"]["subject_fidelity"], 0.0)]
        curve += [(c["subject_fidelity"], drift(c)) for c in plain[unit]["curve"]]
        last = r["curve"][-1]
        ratio = matched_ratio((last["subject_fidelity"], drift(last)), curve, near_base)
        if ratio is None:
            missing += 1
        else:
            ratios.append(ratio)
    return {"ratio": bootstrap_mean(ratios, resamples) if ratios else None, "n": len(ratios), "unmatched": missing}


def matched_ratio(method_point: tuple[float, float], plain_curve: list[tuple[float, float]],
                  near_base: float = 0.02) -> float | None:
    """A method's drift over plain LoRA's drift at the method's subject fidelity. `plain_curve` is plain LoRA's
    (fidelity, drift) points in training order from the base model (drift 0) on, for the same subject and seed;
    its drift at the method's fidelity is interpolated linearly along it (metrics.matched_drift). None when plain
    LoRA never reached that fidelity or was still within `near_base` of the base model (no ratio to speak of)."""
    fidelity, drift = method_point
    plain = metrics.matched_drift(plain_curve, fidelity)
    if plain is None or plain < near_base:
        return None
    return drift / plain


def verdict(low: float, high: float, better_below: float | None = None, better_above: float | None = None) -> str:
    """From an interval: `holds` if it lies wholly on the claimed side of the threshold, `does not hold` if wholly on
    the other side, `inconclusive` if it straddles it."""
    if better_below is not None:
        return "holds" if high < better_below else "does not hold" if low > better_below else "inconclusive"
    return "holds" if low > better_above else "does not hold" if high < better_above else "inconclusive"


def unit_of(result: dict) -> tuple[str, int]:
    return result["job"]["subject"], result["job"]["seed"]


def summarise(results: list[dict], resamples: int = 4000) -> dict:
    """Figures with intervals from job results (benchmark.run_job's dicts).

    - `final`: per (method, guidance) the mean of each score at the last checkpoint over (subject, seed) units;
    - `matched`: per method, plain LoRA's-curve drift ratio at the method's last checkpoint (same subject and seed);
    - `deltas`: per-unit paired differences the claims are read from (guidance modes against CFG and autoguidance;
      APT's prior and text alignment against plain LoRA's)."""
    by = {}
    for r in results:
        by.setdefault(r["job"]["method"], {})[unit_of(r)] = r
    scores = ("subject_fidelity", "text_alignment", "prior_accuracy", "prior_similarity_to_base", "prior_rmse_to_base")
    final = {}
    for method, units in by.items():
        modes = {m for r in units.values() for m in r["final"]}
        for mode in sorted(modes):
            rows = [r["final"][mode] for r in units.values() if mode in r["final"]]
            final[f"{method} | {mode}"] = {k: bootstrap_mean([row[k] for row in rows], resamples) for k in scores}
            final[f"{method} | {mode}"]["n"] = len(rows)
    base_rows = [r["base"] for r in by.get("plain LoRA", {}).values()]  # one per (subject, seed) unit
    if base_rows:
        final["base model | CFG"] = {k: bootstrap_mean([row[k] for row in base_rows], resamples) for k in scores}
        final["base model | CFG"]["n"] = len(base_rows)
    plain = by.get("plain LoRA", {})
    matched, deltas, gain_share = {}, {}, {}
    for method, units in by.items():
        if method == "plain LoRA":
            continue
        matched[method] = matched_drift_ratio(units, plain, pixel_drift, resamples)
        for k in ("prior_accuracy", "text_alignment", "prior_rmse_to_base"):
            diffs = [r["final"]["CFG"][k] - plain[u]["final"]["CFG"][k] for u, r in units.items() if u in plain]
            if diffs:
                deltas[f"{method} − plain LoRA: {k}"] = {"delta": bootstrap_mean(diffs, resamples), "n": len(diffs)}
        paired = [(r["final"]["CFG"]["subject_fidelity"] - r["base"]["subject_fidelity"],
                   plain[u]["final"]["CFG"]["subject_fidelity"] - plain[u]["base"]["subject_fidelity"])
                  for u, r in units.items() if u in plain]
        if paired:
            gain_share[method] = {"share": ratio_of_means(*zip(*paired), resamples=resamples), "n": len(paired)}
    for method, units in by.items():
        modes = sorted({m for r in units.values() for m in r["final"] if m.startswith("personalization guidance")})
        for mode in modes:
            guided = [r for r in units.values() if mode in r["final"]]
            for other in ("CFG", "autoguidance"):
                for k in ("subject_fidelity", "text_alignment"):
                    diffs = [r["final"][mode][k] - r["final"][other][k] for r in guided if other in r["final"]]
                    if diffs:
                        deltas[f"{method}: {mode} − {other}: {k}"] = {"delta": bootstrap_mean(diffs, resamples),
                                                                        "n": len(diffs)}
    return {"final": final, "matched": matched, "deltas": deltas, "gain_share": gain_share, **explanations(by, resamples)}


def explanations(by: dict, resamples: int = 4000) -> dict:
    """Figures that test why a claim does not hold, from the same jobs (`by`: method -> unit -> result):

    - `matched_features`: per method, the matched-fidelity drift ratio with drift read as classifier-feature distance
      (1 − the prior samples' cosine similarity to the base model's) instead of pixel RMSE: is the verdict the metric's?
    - `matched_text`: per guidance mode of plain LoRA, its text alignment minus the text alignment plain LoRA had under
      CFG when its training first reached the guided samples' subject fidelity (interpolated along its checkpoints, from
      the base model on): does guidance trade text alignment for fidelity the way longer training does, or worse?
    """
    plain = by.get("plain LoRA", {})
    features, text = {}, {}
    for method, units in by.items():
        readable = all("prior_similarity_to_base" in c for r in [*units.values(), *plain.values()] for c in r["curve"])
        if method != "plain LoRA" and readable:
            features[method] = matched_drift_ratio(units, plain, feature_drift, resamples, near_base=NEAR_BASE_FEATURES)
    modes = sorted({m for r in plain.values() for m in r["final"] if m.startswith("personalization guidance")})
    for mode in modes:
        diffs, missing = [], 0
        for r in plain.values():
            if mode not in r["final"] or "text_alignment" not in r["curve"][-1]:
                continue
            curve = [(r["base"]["subject_fidelity"], r["base"]["text_alignment"])]
            curve += [(c["subject_fidelity"], c["text_alignment"]) for c in r["curve"]]
            at_cfg = metrics.matched_drift(curve, r["final"][mode]["subject_fidelity"])
            if at_cfg is None:
                missing += 1
                continue
            diffs.append(r["final"][mode]["text_alignment"] - at_cfg)
        text[mode] = {"delta": bootstrap_mean(diffs, resamples) if diffs else None, "n": len(diffs), "unmatched": missing}
    return {"matched_features": features, "matched_text": text}


# --- the claims table ------------------------------------------------------------------------------------------


def explanation(what: str, effect, better_below=None, better_above=None, ratio: bool = False) -> dict:
    """One tested explanation of a claim's row: `effect` is ((mean, low, high), n) or None (not measured); its verdict
    is read from the interval as the claims' are; `ratio` formats it as a ratio (×) instead of a difference."""
    if effect is None:
        return {"explanation": what, "effect": None, "verdict": "not measured", "ratio": ratio}
    (mean, lo, hi), n = effect
    return {"explanation": f"{what} (n = {n})", "effect": (mean, lo, hi), "ratio": ratio,
            "verdict": verdict(lo, hi, better_below=better_below, better_above=better_above)}


def claims(summary: dict) -> list[dict]:
    """One row per claim of the four papers: the measured effect, its interval and the verdict from the interval, and
    under `explanations` the figures that test why it might not hold (a knob's scale, the metric, a trade-off)."""
    rows = []

    def ratio_effect(m):
        if not m or m.get("ratio") is None:
            return None
        return m["ratio"], m["n"], m["unmatched"]

    def ratio_row(claim, method, explain=()):
        found = ratio_effect(summary["matched"].get(method))
        if found is None:
            return {"claim": claim, "measure": f"{method} drift / plain LoRA drift at matched fidelity",
                    "effect": None, "verdict": "not measured", "explanations": list(explain)}
        (mean, lo, hi), n, unmatched = found
        return {"claim": claim, "measure": f"{method} drift / plain LoRA drift at matched fidelity (n = {n}, "
                f"{unmatched} unmatched)", "effect": (mean, lo, hi), "verdict": verdict(lo, hi, better_below=1.0),
                "explanations": list(explain)}

    def delta_row(claim, key, measure, explain=()):
        d = summary["deltas"].get(key)
        if not d:
            return {"claim": claim, "measure": measure, "effect": None, "verdict": "not measured",
                    "explanations": list(explain)}
        mean, lo, hi = d["delta"]
        return {"claim": claim, "measure": f"{measure} (n = {d['n']})", "effect": (mean, lo, hi),
                "verdict": verdict(lo, hi, better_above=0.0), "explanations": list(explain)}

    def ratio_of(table, method):
        found = ratio_effect(summary.get(table, {}).get(method))
        return None if found is None else (found[0], found[1])

    def delta_of(table, key):
        d = summary.get(table, {}).get(key)
        return None if not d or d["delta"] is None else (d["delta"], d["n"])

    anchor_explain = [
        explanation("knob scale: the anchor at ten times its default weight (0.1), drift ratio", 
                    ratio_of("matched", "parameter anchor, weight 0.1"), better_below=1.0, ratio=True),
        explanation("metric: drift read as classifier-feature distance (1 − cosine similarity) instead of pixel RMSE, "
                    "drift ratio", ratio_of("matched_features", "parameter anchor"), better_below=1.0, ratio=True),
    ]
    rows.append(ratio_row("P&P: less drift than DreamBooth-LoRA at matched fidelity", "parameter anchor", anchor_explain))
    for k, what in (("prior_accuracy", "prior accuracy"), ("text_alignment", "text alignment")):
        d = summary["deltas"].get(f"APT − plain LoRA: {k}")
        if not d:
            rows.append({"claim": f"APT: {what} kept", "measure": f"APT − plain LoRA, {what}", "effect": None,
                         "verdict": "not measured", "explanations": []})
            continue
        mean, lo, hi = d["delta"]
        # "kept": no loss against plain LoRA; holds if the interval lies above −0.05, fails if wholly below it
        rows.append({"claim": f"APT: {what} kept (not below plain LoRA's by more than 0.05)",
                     "measure": f"APT − plain LoRA, {what} (n = {d['n']})", "effect": (mean, lo, hi),
                     "verdict": verdict(lo, hi, better_above=-0.05), "explanations": []})
    for other in ("CFG", "autoguidance"):
        for k, what in (("text_alignment", "text alignment"), ("subject_fidelity", "subject fidelity")):
            explain = [explanation(f"knob scale: the weak model without the LoRA (s = 0), {what} − {other}",
                                   delta_of("deltas", f"plain LoRA: personalization guidance, s = 0 − {other}: {k}"),
                                   better_above=0.0)]
            if other == "CFG" and k == "text_alignment":
                explain.append(explanation("trade-off: text alignment − CFG's at the same subject fidelity along "
                                           "training", delta_of("matched_text", "personalization guidance"),
                                           better_above=0.0))
            rows.append(delta_row(f"personalization guidance: better {what} than {other}",
                                  f"plain LoRA: personalization guidance − {other}: {k}",
                                  f"personalization guidance − {other}, {what}, same LoRA and cfg", explain))
    return rows


def claims_markdown(rows: list[dict], provenance: str) -> str:
    """The table; each claim that does not hold, or is inconclusive, lists the explanations tested and their verdicts."""
    def fmt(effect, ratio):
        if effect is None:
            return "–"
        if ratio:
            return f"{effect[0]:.2f}× ({effect[1]:.2f}–{effect[2]:.2f})"
        return f"{effect[0]:+.3f} ({effect[1]:+.3f} to {effect[2]:+.3f})"

    lines = [provenance, "", "| claim | measure | effect (mean, 95% bootstrap interval) | verdict | explanation tested |",
             "|---|---|---|---|---|"]
    for r in rows:
        eff = fmt(r["effect"], r["effect"] is not None and "drift /" in r["measure"])
        tested = "–"
        if r["verdict"] in ("does not hold", "inconclusive") and r.get("explanations"):
            tested = "; ".join(f"{e['explanation']}: {fmt(e['effect'], e['ratio'])}, {e['verdict']}"
                               for e in r["explanations"])
        lines.append(f"| {r['claim']} | {r['measure']} | {eff} | {r['verdict']} | {tested} |")
    return "\n".join(lines)
