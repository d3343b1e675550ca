"""The drift benchmark's jobs as sweep jobs, without Ray or ComfyUI: what makes a job's key, the record's round trip
back to the benchmark's job, refusals in a worker whose checkout differs, and reading the results folder back."""

import json

import pytest
from driftless.bench.drift import benchmark, grid, sweep
from driftless.sweeps import spec, store

KNOBS = {"steps": 4, "checkpoints": (2, 4), "rank": 8, "learning_rate": 1e-3,
         "prior": (("circle", "red", "black"),), "align": (("blue", "black"),)}


def _job(subject="orange-cross", method="plain LoRA", seed=0, **knobs):
    return grid.expand([subject], [method], [seed], {**KNOBS, **knobs})[0]


def _key(job, recipe="aaaa"):
    return spec.content_key(sweep.record(job, recipe))


def test_the_key_follows_the_job_the_model_and_the_sampling_and_nothing_else(monkeypatch):
    key = _key(_job())
    # the same job, rebuilt with its knobs in another order, or from its own record, keeps its key
    assert _key(grid.expand(["orange-cross"], ["plain LoRA"], [0], dict(reversed(list(KNOBS.items()))))[0]) == key
    assert _key(sweep.grid_job(sweep.record(_job(), "aaaa"))) == key
    # a knob, the seed, the method, the subject or the model's recipe each make a new key
    changed = {_key(_job(steps=5)), _key(_job(learning_rate=2e-3)), _key(_job(prior=(("square", "red", "black"),))),
               _key(_job(seed=1)), _key(_job(method="APT")), _key(_job(subject="cyan-square")), _key(_job(), "bbbb")}
    assert len(changed) == 7 and key not in changed
    # so do the benchmark's sampling settings and a method's default changed in the code
    monkeypatch.setattr(benchmark, "CFG", benchmark.CFG + 1)
    assert _key(_job()) != key
    monkeypatch.undo()
    anchor = _key(_job(method="parameter anchor"))
    classes = benchmark._regularizer_classes()
    regularizer, config = classes["parameter anchor"]

    class NewDefault(config):  # the anchor's config as it would be with another default weight
        def as_dict(self):
            return {**super().as_dict(), "weight": 0.5}

    monkeypatch.setattr(benchmark, "_regularizer_classes", lambda: {**classes, "parameter anchor": (regularizer, NewDefault)})
    assert sweep.method_settings("parameter anchor")["weight"] == 0.5
    assert _key(_job(method="parameter anchor")) != anchor
    # and the code the numbers come from
    assert spec.content_key(sweep.record(_job(), "aaaa", code="0" * 16)) != spec.content_key(
        sweep.record(_job(), "aaaa", code="1" * 16))


def test_the_code_fingerprint_follows_the_code_not_its_comments(tmp_path):
    def tree(body: str):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        (root / "trainers").mkdir(parents=True)
        (root / "trainers" / "loop.py").write_text(body)
        (root / "bench" / "drift").mkdir(parents=True)
        (root / "bench" / "drift" / "benchmark.py").write_text("STEPS = 12\n")
        return root

    base = sweep.code_fingerprint(tree('def step(x):\n    """Once."""\n    return x + 1\n'))
    assert sweep.code_fingerprint(tree('def step(x):\n    """Once, said otherwise."""\n    # a comment\n'
                                       '    return x + 1\n')) == base
    assert sweep.code_fingerprint(tree('def step(x):\n    """Once."""\n    return x + 2\n')) != base
    assert sweep.code_fingerprint() == sweep.record(_job(), "aaaa")["code"]  # this checkout's, by default

def test_a_record_is_json_and_gives_back_the_benchmarks_job():
    job = _job(method="parameter anchor, weight 0.1")
    rec = json.loads(json.dumps(sweep.record(job, "aaaa")))  # as a worker receives it
    assert sweep.grid_job(rec) == job and sweep.grid_job(rec).key == job.key
    assert rec["runner"] == {"function": "driftless.bench.drift.sweep:run_job"}
    assert rec["method_settings"]["weight"] == 0.1 and rec["model"] == {"recipe": "aaaa"}
    assert rec["sampling"]["cfg"] == benchmark.CFG and rec["sampling"]["steps"] == benchmark.SAMPLER_STEPS
    plan = sweep.make_sweep([job, _job(seed=1)], "aaaa", "/tmp/x", cpus_per_job=2)
    assert [j.key for j in plan.jobs] == [_key(job, "aaaa"), _key(_job(seed=1), "aaaa")]
    assert plan.cpus_per_job == 2 and plan.replicate == "seed" and plan.jobs[0].label == "orange-cross / parameter anchor, weight 0.1 / seed 0"


def test_a_worker_refuses_a_job_made_with_other_settings(tmp_path):
    rec = sweep.record(_job(), "aaaa")
    rec["sampling"] = {**rec["sampling"], "cfg": 99.0}
    with pytest.raises(sweep.DriftJobError, match="sampling"):
        sweep.run_job(rec, tmp_path)
    with pytest.raises(sweep.DriftJobError, match="code"):
        sweep.run_job({**sweep.record(_job(), "aaaa"), "code": "0" * 16}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_weights_are_found_by_their_recipe(tmp_path, monkeypatch):
    import torch
    from driftless.shapes import pretrain, weights
    from safetensors.torch import save_file

    monkeypatch.setenv("DRIFTLESS_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "SHIPPED", tmp_path / "none")
    folder = tmp_path / "shapes-abcd"
    folder.mkdir()
    for name in (pretrain.CHECKPOINT, pretrain.CLASSIFIER):
        save_file({"w": torch.zeros(1)}, str(folder / name), metadata={weights.RECIPE_KEY: json.dumps("abcd")})
    assert sweep.weights_folder("abcd") == folder
    with pytest.raises(sweep.DriftJobError, match="no shapes weights of recipe ffff"):
        sweep.weights_folder("ffff")


def test_results_are_read_back_in_job_order_and_the_missing_named(tmp_path):
    jobs = [_job(seed=s) for s in (0, 1, 2)]
    plan = sweep.make_sweep(jobs, "aaaa", tmp_path)
    s = store.Store(tmp_path)
    for job in (plan.jobs[2], plan.jobs[0]):  # two finished jobs, committed as a worker commits them
        tmp = s.begin(job.key, {"key": job.key})
        (tmp / sweep.RESULT_FILE).write_text(json.dumps({"job": job.record["axes"]}))
        (tmp / "result.json").write_text("{}")
        s.commit(job.key, tmp)
    found, missing = sweep.read_results(tmp_path, plan)
    assert [r["job"]["seed"] for r in found] == [0, 2] and missing == [plan.jobs[1]]


def _weights(folder, recipe):
    import torch
    from driftless.shapes import pretrain, weights
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    for name in (pretrain.CHECKPOINT, pretrain.CLASSIFIER):
        save_file({"w": torch.zeros(1)}, str(folder / name), metadata={weights.RECIPE_KEY: json.dumps(recipe)})
    return folder


def test_the_benchmark_reports_failed_jobs_and_builds_its_tables_from_the_rest(tmp_path, fake_sweep_engine, capsys):
    """benchmark.main with the sweep engine replaced by one that commits the plain LoRA jobs (hand-made scores) and
    fails the APT ones: the tables cover the plain LoRA jobs, name the missing ones, and the exit code is 1."""
    import argparse

    scores = lambda f, d: {"subject_fidelity": f, "text_alignment": 0.5, "prior_accuracy": 0.8,
                           "prior_similarity_to_base": 1 - d, "prior_rmse_to_base": d}

    def result(axes):
        f = 0.5 + 0.1 * axes["seed"]
        return {"job": {k: axes[k] for k in ("subject", "method", "seed")}, "base": scores(0.4, 0.0),
                "curve": [{**scores(f - 0.05, 0.1), "step": 2}, {**scores(f, 0.2), "step": 4}],
                "final": {"CFG": scores(f, 0.2)}, "wall_s": 1.0, "cpu_s": 2.0}

    calls = fake_sweep_engine(sweep.RESULT_FILE, result, lambda axes: axes["method"] == "APT")
    folder = _weights(tmp_path / "model", "abcd")
    args = argparse.Namespace(mode="full", steps=4, score_every=None, subjects=["orange-cross"], methods=["APT"],
                              seeds=[0, 1], prior=None, align=None, name="drift_fake", results=tmp_path / "jobs",
                              threads=1, workers=2, address=None, load=0.0)
    assert benchmark.main(folder, args, tables=tmp_path / "tables") == 1
    assert calls == [{"address": None, "num_cpus": 2, "in_process": False, "cpus_per_job": 1,
                      "retries": 1}]  # on Ray, 2 workers of 1 CPU slot each
    out = capsys.readouterr().out
    assert "2 job(s) failed: orange-cross / APT / seed 0; orange-cross / APT / seed 1" in out
    report = json.loads((tmp_path / "tables" / "drift_fake.json").read_text())
    assert report["missing"] == ["orange-cross / APT / seed 0", "orange-cross / APT / seed 1"]
    assert sorted(r["job"]["seed"] for r in report["jobs"]) == [0, 1] and report["cpu_s"] == 4.0
    assert report["summary"]["final"]["plain LoRA | CFG"]["subject_fidelity"][0] == pytest.approx(0.55)  # (0.5 + 0.6) / 2
    assert "MISSING: 2 of 4 jobs" in (tmp_path / "tables" / "drift_fake.md").read_text()


def test_the_claims_provenance_says_when_jobs_were_reused(monkeypatch):
    from driftless.bench.drift import claims

    monkeypatch.setattr(grid, "summarise", lambda jobs: {})  # the table itself is tested in test_drift_bench_parts
    monkeypatch.setattr(grid, "claims", lambda summary: [])
    report = {"summary": {"final": {}, "matched": {}, "deltas": {}}, "command": "./driftless bench drift", "mode": "full",
              "date": "2026-12-05 17:00 UTC", "jobs": [{}] * 90, "wall_s": 120.0, "cpu_s": 4000.0}
    assert "90 jobs, 120 s wall, 4000 s CPU.\n" in claims.render(report, "bench/results/drift.json")
    text = claims.render({**report, "reused": 80}, "bench/results/drift.json")
    assert "90 jobs, 120 s wall, 4000 s CPU (80 jobs reused from an earlier run, not in the wall time).\n" in text


DRY_RUNS = {  # (the benchmark's argparse values, the labels of its first two jobs, how many jobs)
    "drift": ({"mode": "quick", "steps": None, "score_every": None, "subjects": ["orange-cross"], "methods": None,
               "seeds": [0], "prior": None, "align": None, "name": "drift_dry", "threads": None, "workers": 1},
              ("orange-cross / plain LoRA / seed 0", "orange-cross / parameter anchor / seed 0"), 3),
    "forgetting": ({"quick": False, "sequences": ["orange-cross,cyan-square"], "seeds": [0, 1], "steps": 4,
                    "methods": ["sequential LoRA", "EWC-DC + DSC"], "name": "forgetting_dry", "threads": None,
                    "workers": None},
                   ("orange-cross > cyan-square / sequential LoRA / seed 0",
                    "orange-cross > cyan-square / EWC-DC + DSC / seed 0"), 4),
}


@pytest.mark.parametrize("bench", sorted(DRY_RUNS))
def test_a_dry_run_lists_the_jobs_and_what_is_done(bench, tmp_path, capsys):
    """Each benchmark run as a sweep (drift, forgetting) lists its jobs, their keys and which are done (sweep.run)."""
    import argparse
    import importlib

    bench_module = importlib.import_module(f"driftless.bench.{bench}.benchmark")
    sweep_module = importlib.import_module(f"driftless.bench.{bench}.sweep")
    values, labels, count = DRY_RUNS[bench]
    folder = _weights(tmp_path / "model", "abcd")
    args = argparse.Namespace(**values, results=tmp_path / "jobs", address=None, load=0.0, dry_run=True)
    plan = sweep_module.make_sweep(bench_module.jobs_for(args), "abcd", tmp_path / "jobs")
    s = store.Store(tmp_path / "jobs")
    tmp = s.begin(plan.jobs[1].key, {})
    (tmp / "result.json").write_text("{}")
    s.commit(plan.jobs[1].key, tmp)
    assert bench_module.main(folder, args, tables=tmp_path / "tables") == 0
    out = capsys.readouterr().out
    assert f"{plan.jobs[1].key}  done     {labels[1]}" in out
    assert f"{plan.jobs[0].key}  to run   {labels[0]}" in out
    assert f"{count} jobs, 1 done, {count - 1} to run; nothing run (--dry-run)" in out
    assert not (tmp_path / "tables").exists()
