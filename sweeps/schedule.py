"""Run a sweep's jobs as Ray tasks: one job per GPU where the cluster has GPUs, else per `cpus_per_job` CPU slots.

Local by default (`ray.init(address="local")` starts a Ray instance on this machine, even where another is running);
`address` joins a running cluster ("auto": the one `ray start` started here or RAY_ADDRESS names). Jobs
already committed in the results folder are skipped. A job whose worker dies or that raises is retried
(`max_retries` and `retry_exceptions`); one that fails every attempt is recorded in failed/ with its error, and
the others go on. Progress: a line per job started, finished and failed, and an overall line (done, running,
failed, queued, ETA) whenever it changes. `in_process=True` runs the same jobs one after another in the calling
process instead (no Ray), with the same store, retries and failure records.
"""

import contextlib
import fcntl
import json
import math
import sys
import time

from . import jobs
from .spec import IMAGE_SUFFIXES, Sweep
from .store import Store
from .summary import write_summary


class SweepBusy(RuntimeError):
    pass


@contextlib.contextmanager
def _exclusive(store: Store):
    """One driver per results folder: a second one would drop the first one's attempt folders."""
    store.root.mkdir(parents=True, exist_ok=True)
    with open(store.root / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepBusy(f"another sweep is running on {store.root}: wait for it, or give another --results "
                            "folder") from None
        yield


def _folder_payload(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_sweep(sweep: Sweep, address: str | None = None, num_cpus: int | None = None, stream=None,
              poll_s: float = 0.5, verbose: bool = False, in_process: bool = False) -> dict:
    """Run every job of `sweep` not yet in its results folder; returns {done, skipped, failed, seconds}.

    `in_process`: no Ray; the jobs run one after another in this process (the same job runner, store, retries and
    failure records), for one machine with one device where a job's state (a loaded model) is best kept."""
    stream = stream or sys.stdout
    store = Store(sweep.results)

    def say(text: str) -> None:
        print(f"[sweep] {text}", file=stream, flush=True)

    with _exclusive(store):
        store.create()
        store.clean()  # nothing runs now: what an earlier driver left in tmp/ and running/ is dead
        (store.root / "sweep.json").write_text(json.dumps(
            {"spec": str(sweep.path), "jobs": [{"key": j.key, "label": j.label, "record": j.record} for j in sweep.jobs]},
            indent=1) + "\n")
        todo = [j for j in sweep.jobs if not store.is_done(j.key)]
        skipped = len(sweep.jobs) - len(todo)
        say(f"{len(sweep.jobs)} jobs in {sweep.path.name}: {skipped} already done in {store.root}, {len(todo)} to run")
        report = {"done": 0, "skipped": skipped, "failed": {}, "seconds": 0.0}
        if todo and in_process:
            report = _run_here(sweep, todo, store, report, say)
        elif todo:
            report = _run_on_ray(sweep, todo, store, report, address, num_cpus, poll_s, verbose, say)
        store.clean()
        write_summary(store, sweep.replicate, [j.key for j in sweep.jobs])
        say(f"summary: {store.root / 'summary.md'}")
    return report


def _run_here(sweep, todo, store, report, say) -> dict:
    t0, durations = time.perf_counter(), []
    for n, j in enumerate(todo, 1):
        say(f"started {j.key} {j.label} in this process ({n}/{len(todo)})")
        for attempt in range(1, sweep.retries + 2):
            try:
                result = jobs.run_job(j.key, j.record, j.label, str(store.root))
                break
            except Exception as e:  # noqa: BLE001  (the job's own error, whatever it is: recorded, the others go on)
                error = f"{type(e).__name__}: {e}"
                if attempt <= sweep.retries:
                    say(f"attempt {attempt} of {j.key} failed, retrying: {' '.join(error.split())[:400]}")
                    continue
                store.record_failure(j.key, {"key": j.key, "label": j.label, "record": j.record, "error": error,
                                             "attempts": attempt, "failed": time.time()})
                report["failed"][j.key] = error
                say(f"FAILED {j.key} {j.label} after {attempt} attempt(s): {' '.join(error.split())[:400]}")
                result = None
        if result is not None:
            report["done"] += 1
            durations.append(result["seconds"])
            say(f"done {j.key} {j.label} in {result['seconds']:.1f} s")
        remaining = len(todo) - n
        eta = sum(durations) / len(durations) * remaining if durations and remaining else 0.0
        say(f"{report['done']}/{len(todo)} done, {len(report['failed'])} failed, {remaining} queued, eta {_fmt_s(eta)}")
    report["seconds"] = time.perf_counter() - t0
    return report


def _run_on_ray(sweep, todo, store, report, address, num_cpus, poll_s, verbose, say) -> dict:
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        # "local": a new instance on this machine even where one is running (another user's `ray start`)
        kwargs = {"include_dashboard": False, "log_to_driver": verbose, "address": address or "local"}
        if not address and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if gpus:
            options, slots, what = {"num_gpus": 1, "num_cpus": sweep.cpus_per_job}, gpus, f"{gpus} GPU(s), one per job"
        else:
            slots = max(1, cpus // sweep.cpus_per_job)
            options, what = {"num_cpus": sweep.cpus_per_job}, f"{cpus} CPU(s), {sweep.cpus_per_job} per job"
        say(f"Ray cluster: {what}; up to {slots} jobs at once; {sweep.retries} retr{'y' if sweep.retries == 1 else 'ies'} "
            "per job")
        task = ray.remote(jobs.run_job).options(max_retries=sweep.retries, retry_exceptions=True, **options)
        payloads = {d: ray.put(_folder_payload(f)) for j in todo for d, f in j.folders.items()}
        workflow = str(sweep.workflow) if sweep.workflow else None
        refs = {}
        for j in todo:
            refs[task.remote(j.key, j.record, j.label, str(store.root), workflow,
                             {d: payloads[d] for d in j.folders}, [str(p) for p in sweep.extra_model_paths])] = j
        return _follow(refs, store, report, slots, poll_s, say)
    finally:
        if started_ray:
            ray.shutdown()


def _follow(refs: dict, store: Store, report: dict, slots: int, poll_s: float, say) -> dict:
    import ray

    pending, total, t0 = list(refs), len(refs), time.perf_counter()
    seen_attempts: dict[str, int] = {}
    durations: list[float] = []
    last_line = ""
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s, fetch_local=False)
        running = {k: v for k, v in store.running(live_only=True).items() if k in {refs[r].key for r in pending}}
        for key, info in running.items():
            if seen_attempts.get(key) != info.get("attempt"):
                seen_attempts[key] = info.get("attempt")
                retry = f" (attempt {info.get('attempt')})" if info.get("attempt", 1) > 1 else ""
                say(f"started {key} {info.get('label', '')} on {info.get('host')} pid {info.get('pid')}{retry}")
        for ref in ready:
            job = refs[ref]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:
                error = _error_text(e)
                attempts = int(store.running().get(job.key, {}).get("attempt", 0)) or seen_attempts.get(job.key) or 1
                store.record_failure(job.key, {"key": job.key, "label": job.label, "record": job.record,
                                               "error": error, "attempts": attempts, "failed": time.time()})
                report["failed"][job.key] = error
                say(f"FAILED {job.key} {job.label} after {attempts} attempt(s): {' '.join(error.split())[:400]}")
                continue
            # every job sent was unfinished when the run began: one found finished was committed by an earlier
            # attempt of this run whose worker died before replying; it counts once, as that attempt's result
            if not store.is_done(job.key):  # the worker wrote it where this machine cannot see
                say(f"WARNING: {job.key} finished on {result.get('host')} but {store.job_dir(job.key)} is not here: "
                    "on a cluster the results folder must be one every node sees at the same path")
            report["done"] += 1
            durations.append(result["seconds"])
            retry = f", attempt {result['attempt']}" if result.get("attempt", 1) > 1 else ""
            retry += " (committed by an earlier attempt)" if result.get("skipped") else ""
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in list(result["metrics"].items())[:4])
            say(f"done {job.key} {job.label} in {result['seconds']:.1f} s{retry}{': ' + metrics if metrics else ''}")
        finished = total - len(pending)
        live = len(running)
        remaining = len(pending)
        mean = sum(durations) / len(durations) if durations else float("nan")
        eta = mean * -(-remaining // max(1, slots)) if remaining else 0.0  # remaining jobs in waves of `slots`
        line = (f"{finished - len(report['failed'])}/{total} done, {live} running, {len(report['failed'])} failed, "
                f"{remaining - live} queued, eta {_fmt_s(eta)}")
        if line != last_line or ready:
            say(line)
            last_line = line
    report["seconds"] = time.perf_counter() - t0
    return report


def _error_text(e) -> str:
    """The job's own error where it raised one, else Ray's reason (a worker that died, say)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
