"""Sweeps on a local Ray cluster of 2 CPU workers, each running the tiny example workflow in-process on ComfyUI: jobs
land once in the results folder, a worker killed mid-job leaves no partial result and its job is retried and counted
once, a job that fails twice is reported with its error while the rest go on, and a rerun skips what is done."""

import json
import os
import signal
import threading
import time

import pytest
from driftless.sweeps import schedule, spec, store

pytestmark = pytest.mark.timeout(300)

SPEC = """
workflow = "{workflow}"
retries = 1
[grid]
seed = [0, 1]
steps = [4]
sample_steps = [2]
[[grid.subject]]
name = "noise"
folder = "pictures"
[[grid.method]]
name = "plain"
[[grid.method]]
name = "broken"
node = "DriftlessParameterAnchor"
form = "no such form"
[set]
seed = ["DriftlessTrainLoRA.seed", "RandomNoise.noise_seed", "KSampler.seed"]
steps = "DriftlessTrainLoRA.steps"
sample_steps = ["BasicScheduler.steps", "KSampler.steps"]
"subject.folder" = "DriftlessLoadImages.files"
"""


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _kill_mid_job(results, label_part: str, seen: dict, stop: threading.Event):
    """Kill the worker running the job whose label has `label_part` once its workflow is executing nodes; note what
    the results folder held at that moment."""
    s = store.Store(results)
    while not stop.is_set():
        for key, info in s.running(live_only=True).items():
            if label_part not in info.get("label", ""):
                continue
            logs = list((s.root / "tmp").glob(f"{key}.*/log.txt"))
            if logs and "[runner] node" in logs[0].read_text():
                os.kill(info["pid"], signal.SIGKILL)
                seen.update(key=key, pid=info["pid"], committed_then=s.job_dir(key).exists(),
                            partial_then=sorted(p.name for p in logs[0].parent.iterdir()))
                return
        time.sleep(0.02)


def test_a_sweep_survives_a_killed_worker_and_failing_jobs(ray_cluster, repo, tmp_path):
    workflow = repo / "example_workflows" / "tiny" / "personalize_and_guide_tiny.json"
    path = tmp_path / "sweep.toml"
    path.write_text(SPEC.format(workflow=workflow))
    import numpy as np
    from PIL import Image

    (tmp_path / "pictures").mkdir()
    for i in range(2):  # the subject: two seeded noise pictures, copied to each worker through Ray
        pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "pictures" / f"p{i}.png")
    sweep = spec.load_sweep(path, tmp_path / "results")
    assert len(sweep.jobs) == 4
    seen, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_mid_job, args=(sweep.results, "seed=0 steps=4 sample_steps=2 subject=noise method=plain",
                                                           seen, stop))
    killer.start()
    log = open(tmp_path / "progress.txt", "w+")  # noqa: SIM115  (read back below, closed with tmp_path)
    try:
        report = schedule.run_sweep(sweep, stream=log, poll_s=0.1)
    finally:
        stop.set()
        killer.join()
    log.seek(0)
    progress = log.read()
    assert seen, "the job to kill was never seen running:\n" + progress
    assert seen["committed_then"] is False and "job.json" in seen["partial_then"]  # killed mid-job, not committed

    s = store.Store(sweep.results)
    plain = {j.key: j for j in sweep.jobs if "plain" in j.label}
    broken = {j.key: j for j in sweep.jobs if "broken" in j.label}
    assert report["done"] == 2 and set(report["failed"]) == set(broken), progress
    finished = s.finished()
    assert set(finished) == set(plain)  # committed once each; the failures nowhere among them
    killed = finished[seen["key"]]
    assert killed["attempt"] == 2 and killed["pid"] != seen["pid"], killed
    other = finished[next(k for k in plain if k != seen["key"])]
    assert other["attempt"] == 1
    for key, result in finished.items():  # every file the result names is there, whole
        folder = s.job_dir(key)
        assert all((folder / f).is_file() for f in result["files"]) and "loras/driftless_demo/lora.safetensors" in result["files"]
        from safetensors.torch import load_file

        assert load_file(folder / "loras" / "driftless_demo" / "lora.safetensors")
        assert any(k.endswith("metrics.clip_i") for k in result["metrics"])
        assert json.loads((folder / "job.json").read_text())["record"] == plain[key].record
        prompt = json.loads((folder / "prompt.json").read_text())
        assert prompt["3"]["inputs"]["files"].startswith("sweep_inputs/")
        report = json.loads(next((folder / "output").rglob("metrics_*.json")).read_text())
        assert report["counts"]["reference"] == 2  # the subject folder's two pictures (the demo's photos are three)
    assert list((sweep.results / "tmp").iterdir()) == [] and list((sweep.results / "running").iterdir()) == []
    failures = s.failures()
    assert set(failures) == set(broken)
    for f in failures.values():
        assert f["attempts"] == 2 and "no such form" in f["error"], f
    rows = json.loads((sweep.results / "summary.json").read_text())["rows"]
    counted = {r["group"]: r["n"] for r in rows if r["metric"].endswith("metrics.clip_i")}
    assert counted == {"steps=4 sample_steps=2 subject=noise method=plain": 2}  # two seeds, the retried one counted once
    assert "FAILED" in progress and "attempt 2" in progress and "eta" in progress
    assert "no such form" in (sweep.results / "summary.md").read_text()

    # a rerun skips the finished jobs (their files untouched) and tries the failed ones again
    before = {k: (s.job_dir(k) / "result.json").read_bytes() for k in plain}
    again = schedule.run_sweep(spec.load_sweep(path, tmp_path / "results"), stream=log, poll_s=0.1)
    assert again["done"] == 0 and again["skipped"] == 2 and set(again["failed"]) == set(broken)
    assert {k: (s.job_dir(k) / "result.json").read_bytes() for k in plain} == before

    # the retried job's numbers are those of a clean run of the same job (CPU, fp32: bit-identical)
    clean = schedule.run_sweep(spec.load_sweep(path, tmp_path / "clean"), stream=log, poll_s=0.1)
    assert clean["done"] == 2
    assert store.Store(tmp_path / "clean").result(seen["key"])["metrics"] == killed["metrics"]


def test_the_command_runs_a_function_sweep_on_its_own_ray_instance(repo, tmp_path):
    """`python -m driftless.sweeps SPEC` (what ./driftless sweep runs): a new local Ray instance, jobs of a runner
    function (no ComfyUI), a job failing on both attempts -> exit 1 with the others done."""
    import subprocess
    import sys

    path = tmp_path / "toy.toml"
    path.write_text('runner = "driftless.sweeps.examples.toy:run_job"\n[grid]\nseed = [0, 1]\nsteps = [40]\n'
                    '[[grid.method]]\nname = "gd"\nlearning_rate = 0.5\n[[grid.method]]\nname = "bad"\nfail = true\n')
    env = {**os.environ, "PYTHONPATH": str(repo / ".driftless" / "pythonpath")}
    command = [sys.executable, "-m", "driftless.sweeps", str(path), "--num-cpus", "2"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "finished: 2 run, 0 already done, 2 failed" in first.stdout, first.stdout
    results = tmp_path / "toy-results"
    done = store.Store(results).finished()
    assert sorted(r["label"] for r in done.values()) == ["seed=0 steps=40 method=gd", "seed=1 steps=40 method=gd"]
    assert all(abs(r["metrics"]["w"] - 3.0) < 0.1 for r in done.values())
    assert all("fails on purpose" in f["error"] and f["attempts"] == 2 for f in store.Store(results).failures().values())
