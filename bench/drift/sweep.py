"""The drift benchmark's jobs as a sweep (docs/sweeps.md): one Ray task per (subject, method, knobs, seed).

Each grid.Job becomes a sweep job whose record holds what its result depends on: the job (axes subject, method,
knobs, seed), every setting of the method's regularizer (its defaults included), the recipe hash the shapes
model's weight files record, the benchmark's sampling settings and a fingerprint of the code the numbers come from.
A new model, new settings or changed code therefore make new keys, and a rerun skips every job already in the
results folder. `run_job` is the sweep's function runner: it runs benchmark.run_job in the worker and writes its
whole result to OUT/drift.json; benchmark.main reads those back and builds the tables.
"""

import functools
import hashlib
import json
import pathlib

from ...sweeps.spec import Job as SweepJob
from ...sweeps.spec import Sweep, content_key

RUNNER = "driftless.bench.drift.sweep:run_job"
RESULT_FILE = "drift.json"


class DriftJobError(RuntimeError):
    """A drift job that cannot run in this worker (its model or settings are not the ones here)."""


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


@functools.lru_cache(maxsize=4)
def code_fingerprint(root: pathlib.Path | None = None) -> str:
    """Hash of the Python code under CODE in the pack at `root` (default this one), each module as its syntax tree
    without docstrings (shapes.weights' rule for the recipe: comments and docstrings do not count), and of the
    ComfyUI release it runs on."""
    from ...headless import host
    from ...shapes.weights import _code

    root = pathlib.Path(root) if root is not None else host.PACK_DIR
    h = hashlib.sha256()
    for entry in CODE:
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


def make_sweep(jobs: list, recipe: str, results: pathlib.Path, cpus_per_job: int = 1, retries: int = 1) -> Sweep:
    """A sweep (sweeps.spec.Sweep, as a spec file would give) of the drift jobs."""
    sweep_jobs = []
    for job in jobs:
        rec = record(job, recipe)
        sweep_jobs.append(SweepJob(key=content_key(rec), record=rec, label=label(job)))
    return Sweep(path=pathlib.Path("driftless bench drift"), results=pathlib.Path(results).resolve(), retries=retries,
                 cpus_per_job=cpus_per_job, replicate="seed", axes=["subject", "method", "knobs", "seed"],
                 jobs=sweep_jobs, extra_model_paths=[], workflow=None)


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


def run_job(rec: dict, out_dir: pathlib.Path) -> dict:
    """The sweep runner: benchmark.run_job for the record's job, its result written to OUT/drift.json; returns the
    last checkpoint's scores per guidance mode ('CFG.subject_fidelity', ...) for the sweep's summary."""
    from ...metrics.report import write_json_atomic
    from ...sweeps.jobs import boot_worker, torch_threads_from_ray
    from . import benchmark

    here = {"sampling": sampler_settings(), "method_settings": method_settings(rec["axes"]["method"]),
            "code": code_fingerprint()}
    for what, value in here.items():
        if rec.get(what) != value:
            raise DriftJobError(f"the job was made with {what} {rec.get(what)}, this worker's checkout has {value}: "
                                "run the benchmark from one checkout (on a cluster, the same on every node)")
    boot_worker([])  # ComfyUI, once per worker process
    torch_threads_from_ray()
    folder = weights_folder(rec["model"]["recipe"])
    result = benchmark.run_job(grid_job(rec), folder)
    write_json_atomic(result, pathlib.Path(out_dir) / RESULT_FILE)
    return {f"{mode}.{k}": v for mode, scores in result["final"].items() for k, v in scores.items()}


def read_results(results: pathlib.Path, sweep: Sweep) -> tuple[list[dict], list]:
    """(every finished job's drift.json in the sweep's order, the sweep jobs that have none)."""
    from ...sweeps.store import Store

    store = Store(results)
    found, missing = [], []
    for job in sweep.jobs:
        path = store.job_dir(job.key) / RESULT_FILE
        if store.is_done(job.key) and path.is_file():
            found.append(json.loads(path.read_text()))
        else:
            missing.append(job)
    return found, missing


def default_results(name: str) -> pathlib.Path:
    """Where a run's jobs are kept by default: .driftless/drift/NAME in the pack (git-ignored)."""
    from ...headless.host import PACK_DIR

    return PACK_DIR / ".driftless" / "drift" / name

