"""`./driftless bench drift` through the sweep engine: a tiny run (one subject, plain LoRA, one seed, 4 steps, one
prior and one alignment prompt) on a local Ray instance of 1 CPU gives the numbers the job gives run in this process,
and a second run finds it done and runs nothing."""

import argparse
import json
import math

import pytest

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(autouse=True)
def _drop_loaded_model():
    """The shapes model this process loads for the in-process job goes with the test, while ComfyUI's modules are
    still there to detach it (left to the interpreter's exit, its patcher's clean-up finds them gone)."""
    yield
    import gc

    from driftless.bench.drift import benchmark

    benchmark._LOADED.clear()
    gc.collect()


def _numbers(result: dict) -> dict:
    """Every score of a drift result (curve, final per guidance mode, base), flat."""
    out = {f"base.{k}": v for k, v in result["base"].items()}
    for point in result["curve"]:
        out.update({f"curve{point['step']}.{k}": v for k, v in point.items()})
    for mode, scores in result["final"].items():
        out.update({f"{mode}.{k}": v for k, v in scores.items()})
    return out


def test_a_tiny_drift_sweep_on_ray_gives_the_in_process_numbers_and_resumes(comfy_host, tmp_path, capsys):
    from driftless.bench.drift import benchmark, sweep
    from driftless.shapes import weights

    folder = weights.folder_for("full")
    assert folder is not None, "no current shapes weights (shipped or cached)"
    args = argparse.Namespace(mode="full", steps=4, score_every=None, subjects=["orange-cross"], methods=["plain LoRA"],
                              seeds=[0], prior=["red circle on black"], align=["blue on black"], name="drift_tiny",
                              results=tmp_path / "jobs", threads=1, workers=1, address=None, load=0.0)
    assert benchmark.main(folder, args, tables=tmp_path / "tables") == 0
    first = capsys.readouterr().out
    assert "1 to run" in first and "Ray cluster: 1 CPU(s), 1 per job" in first, first
    [job] = benchmark.jobs_for(args)
    plan = sweep.make_sweep([job], weights.recorded_recipe(folder), tmp_path / "jobs")
    saved = plan.results / "jobs" / plan.jobs[0].key / sweep.RESULT_FILE
    on_ray = json.loads(saved.read_text())
    assert on_ray["job"] == json.loads(json.dumps(job.record()))

    # the same job in this process, one torch thread as in the worker (which had 1 CPU slot): the same operations in
    # the same order on the same seeds, so the numbers agree to float32 rounding (they came out identical here)
    direct = benchmark.run_job(job, folder)
    a, b = _numbers(on_ray), _numbers(json.loads(json.dumps(direct)))
    assert a.keys() == b.keys() and len(a) > 20 and all(math.isfinite(v) for v in a.values())
    assert a == pytest.approx(b, abs=1e-6)
    report = json.loads((tmp_path / "tables" / "drift_tiny.json").read_text())
    assert [r["final"] for r in report["jobs"]] == [on_ray["final"]] and report["missing"] == []

    # a rerun finds the job done: nothing runs, its file is untouched, the tables are written again from it
    before = saved.read_bytes()
    assert benchmark.main(folder, args, tables=tmp_path / "tables") == 0
    second = capsys.readouterr().out
    assert "1 already done" in second and "0 to run" in second and "Ray cluster" not in second, second
    assert saved.read_bytes() == before
