"""The forgetting benchmark's jobs as a sweep (docs/sweeps.md): one job per (sequence, method, seed).

Each benchmark.Job becomes a sweep job whose record holds what its numbers depend on: the job (axes sequence, method,
knobs: steps, rank, learning rate, and seed), the benchmark's settings (the continual nodes' defaults it runs at,
triggers, picture counts, c_0, the drift benchmark's sampling settings), the recipe hash the shapes model's weight
files record and a fingerprint of the code the numbers come from (the drift benchmark's fingerprint, over its files
and this benchmark's job code). A new model, other settings or changed code therefore make new keys, and a rerun
skips every job already in the results folder. `run_job` is the sweep's function runner: it runs benchmark.run_job in
the worker (a Ray worker, or the command's own process) and writes its whole result to OUT/forgetting.json;
benchmark.main reads those back and builds the tables. The plumbing is the drift sweep's (bench/drift/sweep.py).
"""

import pathlib

from ..drift import sweep as drift_sweep

RUNNER = "driftless.bench.forgetting.sweep:run_job"
RESULT_FILE = "forgetting.json"
# the drift job's code (this benchmark samples, scores and loads the model with it) and this benchmark's job
CODE = drift_sweep.CODE + ("bench/forgetting/benchmark.py",)


def settings() -> dict:
    """What benchmark.run_job trains, samples and scores with, beside the job's own knobs."""
    from ...trainers.regularizers.continual import ContinualConfig
    from . import benchmark

    return drift_sweep._plain({
        "continual": ContinualConfig().as_dict(), "nodes": benchmark.DEFAULTS, "triggers": benchmark.TRIGGERS,
        "pictures": {"train": benchmark.TRAIN_PICTURES, "held_out": benchmark.HELD_OUT_PICTURES},
        "pretrained_prompt": benchmark.PRETRAINED_PROMPT, "sampling": drift_sweep.sampler_settings()})


def code_fingerprint() -> str:
    return drift_sweep.code_fingerprint(files=CODE)


def record(job, recipe: str, settings_: dict | None = None, code: str | None = None) -> dict:
    """The sweep record of a benchmark.Job made with the shapes model of recipe hash `recipe` by this checkout's code."""
    return {"runner": {"function": RUNNER},
            "axes": {"sequence": list(job.sequence), "method": job.method, "knobs": job.knob, "seed": job.seed},
            "settings": settings_ or settings(), "model": {"recipe": recipe}, "code": code or code_fingerprint()}


def job_of(rec: dict):
    """The benchmark.Job a record describes."""
    from . import benchmark

    axes = rec["axes"]
    return benchmark.Job(tuple(axes["sequence"]), axes["method"], int(axes["seed"]), tuple(sorted(axes["knobs"].items())))


def label(job) -> str:
    return f"{' > '.join(job.sequence)} / {job.method} / seed {job.seed}"


def make_sweep(jobs: list, recipe: str, results: pathlib.Path, cpus_per_job: int = 1, retries: int = 1):
    """A sweep of the forgetting jobs."""
    return drift_sweep.sweep_of("driftless bench forgetting", ["sequence", "method", "knobs", "seed"],
                                [(record(job, recipe), label(job)) for job in jobs], results, cpus_per_job, retries)


def run_job(rec: dict, out_dir: pathlib.Path) -> dict:
    """The sweep runner: benchmark.run_job for the record's job, its result written to OUT/forgetting.json; returns
    the job's figures (stats.job_figures: forgetting, learned and final averages, prior drift) for the sweep's summary."""
    from ...metrics.report import write_json_atomic
    from . import benchmark, stats

    folder = drift_sweep.prepare_worker(rec, {"settings": settings(), "code": code_fingerprint()})
    result = benchmark.run_job(job_of(rec), folder)
    write_json_atomic(result, pathlib.Path(out_dir) / RESULT_FILE)
    return stats.job_figures(result)
