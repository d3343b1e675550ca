"""The drift benchmark's jobs as a sweep (docs/sweeps.md): one Ray task per (subject, method, knobs, seed).

Each grid.Job becomes a sweep job whose record holds what its result depends on: the job (axes subject, method,
knobs, seed), every setting of the method's regularizer (its defaults included), the recipe hash the shapes
model's weight files record, the benchmark's sampling settings and a fingerprint of the code the numbers come from.
A new model, new settings or changed code therefore make new keys, and a rerun skips every job already in the
results folder. `run_job` is the sweep's function runner: it runs benchmark.run_job in the worker and writes its
whole result to OUT/drift.json; benchmark.main reads those back and builds the tables.

The parts that are not the drift job's own (the code fingerprint, the worker's checks and set-up, making the
sweep, running it and reading it back) serve the forgetting benchmark's sweep too (bench/forgetting/sweep.py).
"""

import functools
import hashlib
import json
import pathlib
import sys

from ...sweeps.spec import Job as SweepJob
from ...sweeps.spec import Sweep, content_key

RUNNER = "driftless.bench.drift.sweep:run_job"
RESULT_FILE = "drift.json"


class DriftJobError(RuntimeError):
    """A benchmark job that cannot run in this worker (its model, settings or code are not the ones here)."""


def sampler_settings() -> dict:
    """What benchmark.run_job samples and scores with, beside the job's own knobs."""
    from . import benchmark

    return {"sampler": "euler", "scheduler": "normal", "steps": benchmark.SAMPLER_STEPS, "cfg": benchmark.CFG,
            "weak_strength": benchmark.WEAK_STRENGTH, "class_prompt": benchmark.CLASS_PROMPT,
            "seeds": {"prior": benchmark.PRIOR_SEEDS, "subject": benchmark.SUBJECT_SEEDS, "align": benchmark.ALIGN_SEEDS}}


def _plain(value):
    """Tuples as lists, recursively: the record as JSON gives it back."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def method_settings(method: str) -> dict:
    """Every setting of the method's regularizer, its node's defaults with the knobs its name changes
    (benchmark.parse_method): a default changed in the code makes new keys, as the name alone would not."""
    from ...trainers.regularizers.prior_preservation import PriorPreservationConfig
    from . import benchmark

    base, knobs = benchmark.parse_method(method)
    if base == "plain LoRA":
        return {}
    config = PriorPreservationConfig if base == "prior preservation" else benchmark._regularizer_classes()[base][1]
    return _plain(config(**knobs).as_dict())


# the pack's code a drift job's numbers come from: the trainer, regularizers, guider, LoRA, shapes model and its
# scores, the tiny model builder, and the benchmark's own job and subjects (paths relative to the pack)
CODE = ("trainers", "guidance", "lora", "shapes", "tinymodels", "bench/drift/benchmark.py", "bench/drift/grid.py")


@functools.lru_cache(maxsize=8)
def code_fingerprint(root: pathlib.Path | None = None, files: tuple = CODE) -> str:
    """Hash of the Python code under `files` (default CODE, the drift job's) in the pack at `root` (default this one),
    each module as its syntax tree without docstrings (shapes.weights' rule for the recipe: comments and docstrings
    do not count), and of the ComfyUI release it runs on."""
    from ...headless import host
    from ...shapes.weights import _code

    root = pathlib.Path(root) if root is not None else host.PACK_DIR
    h = hashlib.sha256()
    for entry in files:
        path = root / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + _code(f).encode() + b"\0")
    try:
        h.update(host.comfyui_version(host.find_comfyui()).encode())
    except (OSError, RuntimeError, ValueError):  # no ComfyUI here: the jobs could not run either
        h.update(b"no ComfyUI")
    return h.hexdigest()[:16]


def record(job, recipe: str, settings: dict | None = None, code: str | None = None) -> dict:
    """The sweep record of a grid.Job made with the shapes model of recipe hash `recipe` by this checkout's code."""
    return {"runner": {"function": RUNNER},
            "axes": {"subject": job.subject, "method": job.method, "knobs": _plain(job.knob), "seed": job.seed},
            "method_settings": method_settings(job.method), "model": {"recipe": recipe},
            "sampling": settings or sampler_settings(), "code": code or code_fingerprint()}


def grid_job(rec: dict):
    """The grid.Job a record describes."""
    from . import grid

    axes = rec["axes"]
    knobs = tuple(sorted((k, _tuples(v)) for k, v in axes["knobs"].items()))
    return grid.Job(axes["subject"], axes["method"], int(axes["seed"]), knobs)


def label(job) -> str:
    return f"{job.subject} / {job.method} / seed {job.seed}"


def sweep_of(command: str, axes: list[str], jobs: list[tuple[dict, str]], results: pathlib.Path, cpus_per_job: int = 1,
             retries: int = 1) -> Sweep:
    """A sweep (sweeps.spec.Sweep, as a spec file would give) of a benchmark's jobs, given as (record, label) pairs;
    each job's key is its record's content key."""
    return Sweep(path=pathlib.Path(command), results=pathlib.Path(results).resolve(), retries=retries,
                 cpus_per_job=cpus_per_job, replicate="seed", axes=axes,
                 jobs=[SweepJob(key=content_key(rec), record=rec, label=text) for rec, text in jobs],
                 extra_model_paths=[], workflow=None)


def make_sweep(jobs: list, recipe: str, results: pathlib.Path, cpus_per_job: int = 1, retries: int = 1) -> Sweep:
    """A sweep of the drift jobs."""
    return sweep_of("driftless bench drift", ["subject", "method", "knobs", "seed"],
                    [(record(job, recipe), label(job)) for job in jobs], results, cpus_per_job, retries)


def weights_folder(recipe: str) -> pathlib.Path:
    """The folder of this machine's shapes weights made by `recipe`: the shipped ones, else the pretraining cache's."""
    from ...shapes import weights

    candidates = [weights.SHIPPED, weights.cache_root() / f"shapes-{recipe}"]
    for folder in candidates:
        if folder.is_dir() and weights.recorded_recipe(folder) == recipe:
            return folder
    raise DriftJobError(f"no shapes weights of recipe {recipe} on this machine (looked in "
                        f"{', '.join(map(str, candidates))}): run `./driftless bench drift --pretrain-only` here, "
                        "or give every node the same checkout and cache")


def prepare_worker(rec: dict, here: dict) -> pathlib.Path:
    """What a benchmark's sweep runner does before its job: refuse a record whose entries differ from `here` (what
    this worker's checkout gives for them: settings, code fingerprint), set ComfyUI up where this process has not
    (a fresh Ray worker; the command's own process and a test's have), torch on the Ray CPU slots, and return the
    folder of the shapes weights the record names."""
    from ...sweeps.jobs import boot_worker, torch_threads_from_ray

    for what, value in here.items():
        if rec.get(what) != value:
            raise DriftJobError(f"the job was made with {what} {rec.get(what)}, this worker's checkout has {value}: "
                                "run the benchmark from one checkout (on a cluster, the same on every node)")
    if "comfy.cli_args" not in sys.modules:
        boot_worker([])  # ComfyUI, once per worker process
    torch_threads_from_ray()
    return weights_folder(rec["model"]["recipe"])


def run_job(rec: dict, out_dir: pathlib.Path) -> dict:
    """The sweep runner: benchmark.run_job for the record's job, its result written to OUT/drift.json; returns the
    last checkpoint's scores per guidance mode ('CFG.subject_fidelity', ...) for the sweep's summary."""
    from ...metrics.report import write_json_atomic
    from . import benchmark

    folder = prepare_worker(rec, {"sampling": sampler_settings(), "method_settings": method_settings(rec["axes"]["method"]),
                                  "code": code_fingerprint()})
    result = benchmark.run_job(grid_job(rec), folder)
    write_json_atomic(result, pathlib.Path(out_dir) / RESULT_FILE)
    return {f"{mode}.{k}": v for mode, scores in result["final"].items() for k, v in scores.items()}


def read_results(results: pathlib.Path, sweep: Sweep, result_file: str = RESULT_FILE) -> tuple[list[dict], list]:
    """(every finished job's `result_file` in the sweep's order, the sweep jobs that have none)."""
    from ...sweeps.store import Store

    store = Store(results)
    found, missing = [], []
    for job in sweep.jobs:
        path = store.job_dir(job.key) / result_file
        if store.is_done(job.key) and path.is_file():
            found.append(json.loads(path.read_text()))
        else:
            missing.append(job)
    return found, missing


def default_results(name: str, bench: str = "drift") -> pathlib.Path:
    """Where a run's jobs are kept by default: .driftless/BENCH/NAME in the pack (git-ignored)."""
    from ...headless.host import PACK_DIR

    return PACK_DIR / ".driftless" / bench / name


def recipe_of(folder: pathlib.Path) -> str:
    """The recipe hash the shapes model's weight files in `folder` record: what a job's record names its model by."""
    from ...shapes import weights

    recipe = weights.recorded_recipe(folder)
    if recipe is None:
        raise SystemExit(f"{folder}: its weight files do not record one recipe hash: rebuild them "
                         "(./driftless bench drift --rebuild-weights, or remove the cache folder)")
    return recipe


def run(plan: Sweep, tag: str, result_file: str, address: str | None = None, workers: int | None = None,
        threads: int = 1, dry_run: bool = False) -> tuple[dict, float, list[dict], list] | None:
    """Run a benchmark's sweep and read it back. `dry_run`: list the jobs, their keys and which are done, and return
    None. Else the jobs not yet in the results folder run (sweeps.schedule.run_sweep): in this process on `threads`
    torch threads when neither `workers` nor `address` is given, else on a local Ray instance of `workers` jobs of
    `threads` CPU slots each, or on the cluster at `address`. Returns (run_sweep's report, the run's wall seconds,
    every finished job's `result_file` in the sweep's order, the jobs that have none)."""
    import time

    from ...sweeps.schedule import SweepBusy, run_sweep
    from ...sweeps.store import Store

    if dry_run:
        lines, done = Store(plan.results).listing(plan.jobs)
        print("\n".join(lines))
        print(f"[{tag}] {len(plan.jobs)} jobs, {done} done, {len(plan.jobs) - done} to run; nothing run (--dry-run)")
        return None
    import torch

    in_process = address is None and workers is None
    if not in_process:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SystemExit(f"[{tag}] the jobs run on Ray here: install it (pip install 'ray>=2.40', the pack's `sweep` "
                             "extra; ./driftless setup has it)") from None
    t0, threads_before = time.perf_counter(), torch.get_num_threads()
    if in_process:
        torch.set_num_threads(threads)  # as a Ray worker of `threads` CPU slots sets it: the same numbers either way
    try:
        report = run_sweep(plan, address=address, num_cpus=None if address or in_process else workers * threads,
                           in_process=in_process)
    except SweepBusy as e:
        raise SystemExit(f"[{tag}] error: {e}") from None
    except KeyboardInterrupt:
        raise SystemExit(f"[{tag}] interrupted: finished jobs stay in {plan.results}; run the same command to go on") from None
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - t0
    results, missing = read_results(plan.results, plan, result_file)
    if not results:
        raise SystemExit(f"[{tag}] no job finished (see {plan.results / 'failed'}); nothing to summarise")
    return report, wall, results, missing


def run_note(plan: Sweep, report: dict, wall: float, cpu: float, threads: int, load: float, address: str | None,
             workers: int | None) -> str:
    """The results' note on how a benchmark's sweep ran: jobs run and reused, wall and CPU time, where, threads, load."""
    import os

    where = (f"cluster {address}" if address else f"{workers} Ray worker(s) on this machine" if workers
             else "in the command's process")
    return (f"run: {len(plan.jobs)} jobs, {report['done']} run now and {report['skipped']} reused from {plan.results}; "
            f"{wall:.0f} s wall for this run; {cpu:.0f} s CPU summed over the jobs' own process times (all threads); "
            f"{where}, {threads} torch thread(s) per job, {os.cpu_count()} cores, load average at the start {load:.2f}")


def missing_notes(plan: Sweep, missing: list) -> list[str]:
    """The results' note naming the failed jobs (none when every job finished)."""
    if not missing:
        return []
    return [f"MISSING: {len(missing)} of {len(plan.jobs)} jobs failed and are not in these figures: "
            + "; ".join(j.label for j in missing) + f" (errors in {plan.results / 'failed'})"]


def finish(tag: str, written: str, missing: list, update_claims=None) -> int:
    """The end of a benchmark's run: docs/claims.md follows a default run (`update_claims`, None for any other run)
    only when every job finished; what was written and which jobs failed are printed. Returns the exit code (1: some
    failed)."""
    if update_claims is not None and not missing:
        update_claims()
    elif update_claims is not None:
        print(f"[{tag}] docs/claims.md left as it was: {len(missing)} job(s) missing; rerun to finish them")
    print(f"[bench] wrote {written}")
    if missing:
        print(f"[{tag}] {len(missing)} job(s) failed: " + "; ".join(j.label for j in missing), flush=True)
    return 1 if missing else 0
