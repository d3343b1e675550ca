"""The forgetting benchmark's jobs as sweep jobs, without Ray or ComfyUI: what makes a job's key, the record's round
trip back to the benchmark's job, refusals in a worker whose checkout differs, and the command's run through the
sweep engine (in this process by default) with a failed job and the results file the claims read. Its dry run is
tested with the drift benchmark's (test_drift_sweep.py)."""

import argparse
import json

import pytest
from driftless.bench.drift import sweep as drift_sweep
from driftless.bench.forgetting import benchmark, sweep
from driftless.sweeps import spec

KNOBS = {"steps": 4, "rank": 8, "learning_rate": 1e-3}


def _job(sequence=("orange-cross", "cyan-square"), method="sequential LoRA", seed=0, **knobs):
    return benchmark.expand([sequence], [method], [seed], {**KNOBS, **knobs})[0]


def _key(job, recipe="aaaa"):
    return spec.content_key(sweep.record(job, recipe))


def test_the_key_follows_the_job_the_model_the_settings_and_the_code(monkeypatch):
    key = _key(_job())
    # the same job with its knobs in another order, or rebuilt from its record as a worker receives it, keeps its key
    assert _key(benchmark.expand([("orange-cross", "cyan-square")], ["sequential LoRA"], [0],
                                 dict(reversed(list(KNOBS.items()))))[0]) == key
    assert _key(sweep.job_of(json.loads(json.dumps(sweep.record(_job(), "aaaa"))))) == key
    # each axis, knob and the model's recipe make a new key
    changed = {_key(_job(steps=5)), _key(_job(rank=4)), _key(_job(learning_rate=2e-3)), _key(_job(seed=1)),
               _key(_job(method="EWC-DC")), _key(_job(sequence=("cyan-square", "orange-cross"))),
               _key(_job(sequence=("orange-cross", "cyan-square", "teal-cross-dots"))), _key(_job(), "bbbb")}
    assert len(changed) == 8 and key not in changed
    # so do a node default the benchmark runs at and the sampling it shares with the drift benchmark
    monkeypatch.setitem(benchmark.DEFAULTS, "fisher_draws", 7)
    assert _key(_job()) != key
    monkeypatch.undo()
    monkeypatch.setattr(drift_sweep, "sampler_settings", lambda: {"steps": 1})
    assert _key(_job()) != key
    monkeypatch.undo()
    # and the code the numbers come from
    assert spec.content_key(sweep.record(_job(), "aaaa", code="0" * 16)) != spec.content_key(
        sweep.record(_job(), "aaaa", code="1" * 16))


def test_the_fingerprint_is_the_drift_jobs_and_the_forgetting_jobs_code(tmp_path):
    def tree(forgetting: str, stats: str = "X = 1\n"):  # a new folder each time: fingerprints are cached by folder
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for path, body in (("trainers/loop.py", "STEP = 1\n"), ("bench/drift/benchmark.py", "STEPS = 12\n"),
                           ("bench/forgetting/benchmark.py", forgetting), ("bench/forgetting/stats.py", stats)):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(body)
        return root

    one, two = tree("TRIGGERS = ('sks',)\n"), tree("TRIGGERS = ('zwx',)\n")
    fingerprint = lambda root: drift_sweep.code_fingerprint(root, sweep.CODE)
    assert fingerprint(one) != fingerprint(two)  # forgetting's job code counts for its jobs...
    assert drift_sweep.code_fingerprint(one) == drift_sweep.code_fingerprint(two)  # ...not for the drift jobs
    # a comment, or the summary's code (stats.py: not the jobs' numbers), changes nothing
    assert fingerprint(tree("TRIGGERS = ('sks',)  # said otherwise\n", stats="X = 2\n")) == fingerprint(one)
    assert sweep.record(_job(), "aaaa")["code"] == sweep.code_fingerprint() != drift_sweep.code_fingerprint()


def test_a_worker_refuses_a_job_made_with_other_settings_or_code(tmp_path):
    rec = sweep.record(_job(), "aaaa")
    rec["settings"] = {**rec["settings"], "triggers": ["abc"]}
    with pytest.raises(drift_sweep.DriftJobError, match="settings"):
        sweep.run_job(rec, tmp_path)
    with pytest.raises(drift_sweep.DriftJobError, match="code"):
        sweep.run_job({**sweep.record(_job(), "aaaa"), "code": "0" * 16}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _args(tmp_path, **kw):
    return argparse.Namespace(**{"quick": False, "sequences": ["orange-cross,cyan-square"], "seeds": [0, 1],
                                 "methods": ["sequential LoRA", "EWC-DC + DSC"], "steps": 4, "threads": None,
                                 "workers": None, "address": None, "results": tmp_path / "jobs", "dry_run": False,
                                 "name": "forgetting_fake", "load": 0.0, **kw})


def test_the_benchmark_runs_its_jobs_in_process_and_builds_its_tables_from_the_finished_ones(tmp_path, monkeypatch,
                                                                                             fake_sweep_engine, capsys):
    """benchmark.main with the sweep engine replaced by one that commits the sequential LoRA jobs (hand-made
    scores) and fails the EWC-DC + DSC ones: in this process by default, no retry; the tables cover the finished jobs
    in the results file's format (what stats and the claims page read), name the missing ones, and the exit code
    is 1."""
    from driftless.bench.drift import claims

    def result(axes):
        forgotten = 0.1 * (1 + axes["seed"])  # 0.1 at seed 0, 0.2 at seed 1
        return {"job": {k: axes[k] for k in ("sequence", "method", "seed", "knobs")},
                "fidelity": [[0.8], [0.8 - forgotten, 0.9]], "dc_accuracy": [[1.0], [0.5, 1.0]],
                "prior_rmse_to_base": 0.1, "wall_s": 1.0, "cpu_s": 3.0}

    calls = fake_sweep_engine(sweep.RESULT_FILE, result, lambda axes: axes["method"] == "EWC-DC + DSC")
    monkeypatch.setattr(drift_sweep, "recipe_of", lambda folder: "abcd")  # the weights' recipe (test_drift_sweep reads one)
    folder = tmp_path / "model"
    assert benchmark.main(folder, _args(tmp_path), tables=tmp_path / "tables") == 1
    assert calls == [{"address": None, "num_cpus": None, "in_process": True, "cpus_per_job": 1, "retries": 0}]
    out = capsys.readouterr().out
    assert ("2 job(s) failed: orange-cross > cyan-square / EWC-DC + DSC / seed 0; orange-cross > cyan-square / "
            "EWC-DC + DSC / seed 1") in out
    report = json.loads((tmp_path / "tables" / "forgetting_fake.json").read_text())
    assert report["missing"] == ["orange-cross > cyan-square / EWC-DC + DSC / seed 0",
                                 "orange-cross > cyan-square / EWC-DC + DSC / seed 1"]
    assert [r["job"]["seed"] for r in report["jobs"]] == [0, 1] and report["cpu_s"] == 6.0
    assert report["recipe"] == "abcd" and report["mode"] == "full" and report["reused"] == 0
    assert report["summary"]["methods"]["sequential LoRA"]["fidelity_forgetting"][0] == pytest.approx(0.15)
    md = (tmp_path / "tables" / "forgetting_fake.md").read_text()
    assert "MISSING: 2 of 4 jobs" in md and "in the command's process, 1 torch thread(s) per job" in md
    # the claims page renders the DC-score rows from it (they are 'not measured': no EWC-DC + DSC job finished)
    text = claims.render({"jobs": [], "command": "c", "mode": "full", "date": "d", "wall_s": 1.0, "cpu_s": 1.0}, "x",
                         report, "forgetting_fake.json")
    assert "command `./driftless bench forgetting" in text and "s wall, shapes model recipe abcd" in text
    text = claims.render({"jobs": [], "command": "c", "mode": "full", "date": "d", "wall_s": 1.0, "cpu_s": 1.0}, "x",
                         {**report, "reused": 3}, "forgetting_fake.json")
    assert "s wall (3 jobs reused from an earlier run, not in the wall time), shapes model recipe abcd" in text

    # on Ray (--workers 2): two jobs at once of one CPU slot each, one retry
    calls.clear()
    assert benchmark.main(folder, _args(tmp_path, workers=2, results=tmp_path / "ray"), tables=tmp_path / "tables") == 1
    assert calls == [{"address": None, "num_cpus": 2, "in_process": False, "cpus_per_job": 1, "retries": 1}]
