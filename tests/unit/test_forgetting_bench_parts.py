"""The forgetting benchmark's arithmetic and aggregation on hand-made score matrices (no ComfyUI)."""

import json

import pytest


def test_forgetting_is_when_learned_minus_at_the_end_by_hand():
    from driftless.bench.forgetting import stats

    m = [[0.8], [0.6, 0.9], [0.5, 0.7, 0.95]]
    # concept 0: 0.8 − 0.5 = 0.3; concept 1: 0.9 − 0.7 = 0.2; the last concept is not counted
    assert stats.forgetting_per_concept(m) == pytest.approx([0.3, 0.2])
    assert stats.forgetting(m) == pytest.approx(0.25)
    assert stats.final_average(m) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert stats.learned_average(m) == pytest.approx((0.8 + 0.9 + 0.95) / 3)
    # a concept that got better after it was learned has negative forgetting
    assert stats.forgetting([[0.4], [0.6, 0.9]]) == pytest.approx(-0.2)


def test_matrix_shape_is_checked():
    from driftless.bench.forgetting import stats

    with pytest.raises(ValueError, match="stage 1 has 1 scores"):
        stats.forgetting([[0.8], [0.6]])
    with pytest.raises(ValueError, match="at least two stages"):
        stats.forgetting([[0.8]])


def _job(sequence, method, seed, fidelity, accuracy, rmse=0.1):
    return {"job": {"sequence": list(sequence), "method": method, "seed": seed}, "fidelity": fidelity,
            "dc_accuracy": accuracy, "prior_rmse_to_base": rmse}


def test_summary_pairs_methods_on_the_same_sequence_and_seed():
    from driftless.bench.forgetting import stats

    results = []
    for seq, offset in ((("a", "b"), 0.0), (("c", "d"), 0.1)):
        for seed in (0, 1):
            # sequential LoRA forgets 0.4 of fidelity and all of the accuracy; EWC-DC + DSC 0.1 and half of it
            results.append(_job(seq, "sequential LoRA", seed, [[0.8 + offset], [0.4 + offset, 0.9]], [[1.0], [0.0, 1.0]]))
            results.append(_job(seq, "EWC-DC + DSC", seed, [[0.8 + offset], [0.7 + offset, 0.6]], [[1.0], [0.5, 1.0]], 0.2))
            results.append(_job(seq, "LoRA-EWC", seed, [[0.8 + offset], [0.8 + offset, 0.5]], [[1.0], [1.0, 0.75]]))
    summary = stats.summarise(results, resamples=200)
    assert summary["methods"]["sequential LoRA"]["n"] == 4
    assert summary["methods"]["sequential LoRA"]["fidelity_forgetting"] == pytest.approx((0.4, 0.4, 0.4))
    # final average: (0.7 + 0.6) / 2 = 0.65 on the first sequence, (0.8 + 0.6) / 2 = 0.7 on the second
    assert summary["methods"]["EWC-DC + DSC"]["fidelity_final"] == pytest.approx((0.675, 0.65, 0.7))
    d = summary["deltas"]["EWC-DC + DSC − sequential LoRA"]
    assert d["n"] == 4
    assert d["fidelity_forgetting"] == pytest.approx((-0.3, -0.3, -0.3))
    assert d["dc_accuracy_forgetting"] == pytest.approx((-0.5, -0.5, -0.5))
    assert d["prior_rmse_to_base"] == pytest.approx((0.1, 0.1, 0.1))
    assert summary["deltas"]["EWC-DC + DSC − LoRA-EWC"]["fidelity_forgetting"] == pytest.approx((0.1, 0.1, 0.1))
    assert "EWC-DC − sequential LoRA" not in summary["deltas"]  # no EWC-DC jobs
    rows = {(r["claim"].split(" than ")[1], "DC accuracy" in r["claim"]): r for r in stats.claims(summary)}
    assert rows[("sequential LoRA", False)]["verdict"] == "holds"
    assert rows[("sequential LoRA", True)]["verdict"] == "holds"
    assert rows[("LoRA-EWC", False)]["verdict"] == "does not hold"
    # DC accuracy: EWC-DC + DSC forgets 1 − 0.5 = 0.5, LoRA-EWC 1 − 1 = 0: +0.5, more forgetting than LoRA-EWC
    assert rows[("LoRA-EWC", True)]["effect"] == pytest.approx((0.5, 0.5, 0.5))
    assert rows[("LoRA-EWC", True)]["verdict"] == "does not hold"
    # plasticity: EWC-DC + DSC learned the second concept to 0.6 against LoRA-EWC's 0.5; the first alike
    plasticity = rows[("LoRA-EWC", False)]["explanations"][1]
    assert plasticity["effect"] == pytest.approx((0.05, 0.05, 0.05)) and plasticity["verdict"] == "holds"
    assert rows[("LoRA-EWC", False)]["explanations"][0]["verdict"] == "not measured"  # no EWC-DC jobs


def test_unpaired_units_are_left_out_of_the_differences():
    from driftless.bench.forgetting import stats

    results = [_job(("a", "b"), "sequential LoRA", 0, [[0.8], [0.4, 0.9]], [[1.0], [0.0, 1.0]]),
               _job(("a", "b"), "sequential LoRA", 1, [[0.8], [0.2, 0.9]], [[1.0], [0.0, 1.0]]),
               _job(("a", "b"), "EWC-DC", 0, [[0.8], [0.6, 0.9]], [[1.0], [1.0, 1.0]])]
    summary = stats.summarise(results, resamples=200)
    d = summary["deltas"]["EWC-DC − sequential LoRA"]
    assert d["n"] == 1 and d["fidelity_forgetting"] == pytest.approx((-0.2, -0.2, -0.2))
    assert summary["methods"]["sequential LoRA"]["fidelity_forgetting"][0] == pytest.approx(0.5)
    rows = stats.claims(summary)
    assert {r["verdict"] for r in rows} == {"not measured"}  # no EWC-DC + DSC jobs


def test_claims_page_takes_the_dc_score_rows_from_the_forgetting_json(tmp_path):
    from driftless.bench.drift import claims
    drift = {"command": "./driftless bench drift --mode quick", "mode": "quick", "date": "2026-12-05 13:50 UTC",
             "jobs": [], "wall_s": 300.0, "cpu_s": 500.0}
    results = [_job(("a", "b"), m, seed, [[0.8], [f, 0.9]], [[1.0], [a, 1.0]])
               for seed in (0, 1) for m, f, a in (("sequential LoRA", 0.4, 0.0), ("LoRA-EWC", 0.5, 0.5),
                                                  ("EWC-DC + DSC", 0.7 - 0.1 * seed, 1.0))]
    forgetting = {"summary": {"stale": "the rows are made from the jobs"}, "command": "./driftless bench forgetting",
                  "mode": "full", "date": "2026-12-05 17:30 UTC", "jobs": results, "wall_s": 900.0, "recipe": "abc123"}
    (tmp_path / "results").mkdir()
    dj, fj = tmp_path / "results" / "drift_quick.json", tmp_path / "results" / "forgetting.json"
    dj.write_text(json.dumps(drift))
    fj.write_text(json.dumps(forgetting))
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "claims.md"
    page.write_text(f"intro\n{claims.BEGIN}\nold\n{claims.END}\n")
    claims.update(dj, page, forgetting_path=tmp_path / "missing.json")
    first = page.read_text()
    assert "| no forgetting result (forgetting.json): run `./driftless bench forgetting` | – | not measured |" in first
    claims.update_forgetting(fj, page)  # keeps the drift file the block cites
    text = page.read_text()
    assert "Figures from `results/drift_quick.json`" in text and "DC-score rows from `results/forgetting.json`" in text
    assert "recipe abc123" in text and "no forgetting result" not in text
    # EWC-DC + DSC − sequential LoRA forgets 0.1 and 0.2 against 0.4: −0.3 and −0.2, mean −0.25
    row = next(line for line in text.splitlines() if "fidelity than sequential LoRA" in line)
    assert "| -0.250 (-0.300 to -0.200) | holds |" in row
