"""`./driftless bench forgetting` through the sweep engine: a tiny job (one pair of subjects, sequential LoRA, one seed,
2 steps per concept) run in this process (the default) and on a local Ray instance of 1 CPU gives the same numbers,
and a rerun finds it done and runs nothing."""

import argparse
import json

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]

TIMES = ("train_s", "wall_s", "cpu_s")


@pytest.fixture(autouse=True)
def _drop_loaded_model():
    """The shapes model this process loads for the in-process job goes with the test (tests/comfy/test_drift_sweep_ray.py
    says why)."""
    yield
    import gc

    from driftless.bench.drift import benchmark

    benchmark._LOADED.clear()
    gc.collect()


def test_a_tiny_forgetting_job_gives_the_same_numbers_in_process_and_on_ray_and_resumes(comfy_host, tmp_path, capsys):
    from driftless.bench.forgetting import benchmark, sweep
    from driftless.shapes import weights

    def args(**kw):
        return argparse.Namespace(**{"quick": True, "sequences": ["orange-cross,cyan-square"], "seeds": [0],
                                     "methods": ["sequential LoRA"], "steps": 2, "threads": 1, "workers": None,
                                     "address": None, "results": tmp_path / "here", "dry_run": False,
                                     "name": "forgetting_tiny", "load": 0.0, **kw})

    def saved(results):
        [job] = benchmark.jobs_for(args())
        plan = sweep.make_sweep([job], weights.recorded_recipe(weights.SHIPPED), results)
        return plan.results / "jobs" / plan.jobs[0].key / sweep.RESULT_FILE

    assert benchmark.main(weights.SHIPPED, args(), tables=tmp_path / "tables") == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and "in this process (1/1)" in out and "Ray cluster" not in out, out
    assert benchmark.main(weights.SHIPPED, args(workers=1, results=tmp_path / "ray"), tables=tmp_path / "tables") == 0
    out = capsys.readouterr().out
    assert "Ray cluster: 1 CPU(s), 1 per job" in out, out

    # one torch thread in both (the worker had 1 CPU slot): the same operations in the same order on the same seeds
    here, on_ray = (json.loads(saved(tmp_path / f).read_text()) for f in ("here", "ray"))
    numbers = lambda r: {k: v for k, v in r.items() if k not in TIMES}
    assert numbers(here) == numbers(on_ray)
    assert len(here["fidelity"]) == 2 and here["prior_rmse_to_base"] > 0
    report = json.loads((tmp_path / "tables" / "forgetting_tiny.json").read_text())
    assert [numbers(r) for r in report["jobs"]] == [numbers(on_ray)] and report["missing"] == []

    # a rerun finds the job done: nothing runs, its file is untouched, the tables are written again from it
    before = saved(tmp_path / "here").read_bytes()
    assert benchmark.main(weights.SHIPPED, args(), tables=tmp_path / "tables") == 0
    out = capsys.readouterr().out
    assert "1 already done" in out and "0 to run" in out and "started" not in out, out
    assert saved(tmp_path / "here").read_bytes() == before
    assert json.loads((tmp_path / "tables" / "forgetting_tiny.json").read_text())["reused"] == 1
