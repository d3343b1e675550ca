"""The forgetting benchmark's arithmetic: pure Python/numpy, no ComfyUI.

A job's scores form a lower-triangular stage × concept matrix: M[s][j] is concept j's score with the LoRA
after stage s (s ≥ j; stages and concepts counted from 0, concept j learned at stage j). From it, per job:

    forgetting of concept j  = M[j][j] − M[S−1][j]               (when learned − at the end; > 0: forgotten)
    forgetting               = mean over j < S−1 of the above   (the last concept cannot have forgotten yet)
    final average            = mean over j of M[S−1][j]          (every concept with the last LoRA)
    learned average          = mean over j of M[j][j]            (how well each was learned at all)

the continual-learning figures of Chaudhry et al. (ECCV 2018, "Riemannian Walk", eq. for forgetting, there the
maximum over earlier stages; here the stage it was learned at, the retention report's "when learned").
`summarise` turns jobs into means with percentile-bootstrap 95% intervals over (sequence, seed) units
(bench/drift/grid.bootstrap_mean) and paired differences between methods on the same unit.
"""

from ..drift.grid import bootstrap_mean, explanation, verdict

METHODS = ("sequential LoRA", "LoRA-EWC", "EWC-DC", "EWC-DC + DSC")
SCORES = {"fidelity": "subject fidelity", "dc_accuracy": "DC accuracy"}
# (method, baseline) pairs whose differences the claims are read from: the DC-score methods against both baselines
COMPARISONS = tuple((m, b) for m in ("EWC-DC + DSC", "EWC-DC") for b in ("sequential LoRA", "LoRA-EWC"))


def check_matrix(matrix: list[list[float]]) -> None:
    for s, row in enumerate(matrix):
        if len(row) != s + 1:
            raise ValueError(f"stage {s} has {len(row)} scores; after stage s the s + 1 concepts learned so far are scored")


def forgetting_per_concept(matrix: list[list[float]]) -> list[float]:
    """M[j][j] − M[S−1][j] for every concept j but the last."""
    check_matrix(matrix)
    last = matrix[-1]
    return [matrix[j][j] - last[j] for j in range(len(matrix) - 1)]


def forgetting(matrix: list[list[float]]) -> float:
    per = forgetting_per_concept(matrix)
    if not per:
        raise ValueError("forgetting needs at least two stages")
    return sum(per) / len(per)


def final_average(matrix: list[list[float]]) -> float:
    check_matrix(matrix)
    return sum(matrix[-1]) / len(matrix[-1])


def learned_average(matrix: list[list[float]]) -> float:
    check_matrix(matrix)
    return sum(matrix[j][j] for j in range(len(matrix))) / len(matrix)


def unit_of(result: dict) -> tuple[tuple[str, ...], int]:
    return tuple(result["job"]["sequence"]), result["job"]["seed"]


def job_figures(result: dict) -> dict:
    """One job's figures: forgetting, final and learned averages of each score matrix, and the prior's drift."""
    out = {}
    for key in SCORES:
        m = result[key]
        out[f"{key}_forgetting"] = forgetting(m)
        out[f"{key}_final"] = final_average(m)
        out[f"{key}_learned"] = learned_average(m)
    out["prior_rmse_to_base"] = result["prior_rmse_to_base"]
    return out


FIGURES = ("fidelity_forgetting", "fidelity_learned", "fidelity_final", "dc_accuracy_forgetting", "dc_accuracy_learned",
           "dc_accuracy_final", "prior_rmse_to_base")


def summarise(results: list[dict], resamples: int = 4000) -> dict:
    """Per method, each figure's mean and interval over (sequence, seed) units; per comparison, the paired difference
    (method − baseline on the same unit) of each figure."""
    by = {}
    for r in results:
        by.setdefault(r["job"]["method"], {})[unit_of(r)] = job_figures(r)
    methods = {}
    for method in [m for m in METHODS if m in by] + sorted(set(by) - set(METHODS)):
        units = by[method]
        methods[method] = {k: bootstrap_mean([f[k] for f in units.values()], resamples) for k in FIGURES}
        methods[method]["n"] = len(units)
    deltas = {}
    for method, baseline in COMPARISONS:
        if method not in by or baseline not in by:
            continue
        shared = [u for u in by[method] if u in by[baseline]]
        if not shared:
            continue
        deltas[f"{method} − {baseline}"] = {
            **{k: bootstrap_mean([by[method][u][k] - by[baseline][u][k] for u in shared], resamples) for k in FIGURES},
            "n": len(shared)}
    return {"methods": methods, "deltas": deltas}


def claims(summary: dict) -> list[dict]:
    """The DC-score claim's rows for docs/claims.md: the paper's method (EWC-DC + DSC) minus each baseline, on the
    forgetting of subject fidelity and of DC accuracy; < 0 is the claimed direction (less forgetting). Each row
    carries the explanations tested from the same jobs: the consolidation's share (EWC-DC without DSC against the
    same baseline) and plasticity (the score when learned: a method that learns less has less to forget)."""
    def effect(key, figure):
        d = summary["deltas"].get(key)
        return None if not d else (tuple(d[figure]), d["n"])

    rows = []
    for baseline in ("sequential LoRA", "LoRA-EWC"):
        for key, what in SCORES.items():
            claim = f"DC-score continual learning (EWC-DC + DSC): less forgetting of {what} than {baseline}"
            found = effect(f"EWC-DC + DSC − {baseline}", f"{key}_forgetting")
            if found is None:
                rows.append({"claim": claim, "measure": "not in this run", "effect": None, "verdict": "not measured",
                             "explanations": []})
                continue
            (mean, lo, hi), n = found
            explain = [
                explanation(f"without DSC: EWC-DC − {baseline}, forgetting", effect(f"EWC-DC − {baseline}",
                                                                                    f"{key}_forgetting"), better_below=0.0),
                explanation(f"plasticity: {what} when learned, EWC-DC + DSC − {baseline}",
                            effect(f"EWC-DC + DSC − {baseline}", f"{key}_learned"), better_above=0.0)]
            rows.append({"claim": claim, "measure": f"EWC-DC + DSC − {baseline}, forgetting of {what} (when learned − at "
                         f"the end), same sequence and seed (n = {n})", "effect": (mean, lo, hi),
                         "verdict": verdict(lo, hi, better_below=0.0), "explanations": explain})
    return rows
