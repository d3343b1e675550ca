"""`./driftless bench sweeps [--jobs 4] [--steps 600] [--repeats 2]`: the same equal jobs (the tiny example workflow,
the same training length, seeds 0..jobs-1) run by `./driftless sweep` on a local Ray instance with 1 CPU slot and with 2,
each configuration into a fresh results folder, in the order 1 2 2 1 ... so drift in the machine's load hits both.

Reported per run: the sweep's wall time (submission to last result, ComfyUI's start-up in each fresh worker included),
the CPU seconds each job's worker process spent on it (`time.process_time`), how long two jobs ran side by side, and
the load average before and after. On a shared machine other users' work shows up as wall time the jobs' own CPU time
does not explain, so a CPU-time-aware ratio is given beside the wall one: the 1-worker run's job CPU seconds over the
busiest worker's in the 2-worker run (what the wall ratio tends to on idle cores, given the jobs ran side by side).
Results: bench/results/sweeps_scaling.{md,json}.
"""

import argparse
import io
import os
import pathlib
import statistics
import tempfile

from ...sweeps import schedule, spec
from ..common import spread, write_results

WORKFLOW = pathlib.Path(__file__).resolve().parents[2] / "example_workflows" / "tiny" / "personalize_and_guide_tiny.json"
SPEC = """
workflow = "{workflow}"
retries = 0
[grid]
seed = {seeds}
steps = [{steps}]
[set]
seed = ["DriftlessTrainLoRA.seed", "RandomNoise.noise_seed", "KSampler.seed"]
steps = "DriftlessTrainLoRA.steps"
"""


def one_run(spec_path: pathlib.Path, results: pathlib.Path, cpus: int) -> dict:
    import ray

    load_before = os.getloadavg()[0]
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        log = io.StringIO()
        report = schedule.run_sweep(spec.load_sweep(spec_path, results), stream=log, poll_s=0.2)
    finally:
        ray.shutdown()
    if report["failed"] or report["done"] == 0:
        raise RuntimeError(f"the sweep did not finish cleanly:\n{log.getvalue()}")
    from ...sweeps.store import Store

    done = list(Store(results).finished().values())
    per_worker: dict[int, float] = {}
    for r in done:
        per_worker[r["pid"]] = per_worker.get(r["pid"], 0.0) + r["cpu_seconds"]
    return {"workers": cpus, "wall_s": report["seconds"], "jobs": report["done"],
            "job_s": [r["seconds"] for r in done], "job_cpu_s": [r["cpu_seconds"] for r in done],
            "busiest_worker_cpu_s": max(per_worker.values()), "worker_processes": len(per_worker),
            "overlap": overlap([(r["started_at"], r["ended_at"]) for r in done]),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def overlap(intervals: list[tuple[float, float]]) -> float:
    """Share of the time from the first job's start to the last one's end during which two or more jobs ran."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running, last, both = 0, events[0][0], 0.0
    for t, step in events:
        if running >= 2:
            both += t - last
        running, last = running + step, t
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return both / span if span > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench sweeps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="equal jobs per sweep (default 4)")
    parser.add_argument("--steps", type=int, default=600,
                        help="training steps per job (default 600: about 15 s of CPU, three times ComfyUI's start-up)")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per configuration (default 2)")
    args = parser.parse_args()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="driftless-bench-sweeps-"))
    spec_path = folder / "equal_jobs.toml"
    spec_path.write_text(SPEC.format(workflow=WORKFLOW, seeds=list(range(args.jobs)), steps=args.steps))
    order = [c for i in range(args.repeats) for c in ((1, 2) if i % 2 == 0 else (2, 1))]
    runs = []
    for i, cpus in enumerate(order):
        run = one_run(spec_path, folder / f"run{i}-{cpus}workers", cpus)
        runs.append(run)
        print(f"[bench] {cpus} worker(s): {run['wall_s']:.1f} s wall for {run['jobs']} jobs "
              f"(job CPU {sum(run['job_cpu_s']):.1f} s in all; load {run['load_before']:.2f} -> {run['load_after']:.2f})",
              flush=True)
    one = [r["wall_s"] for r in runs if r["workers"] == 1]
    two = [r["wall_s"] for r in runs if r["workers"] == 2]
    pairs = [a / b for a, b in zip(one, two)]
    rows = [{"workers": w, "wall_s": spread([r["wall_s"] for r in runs if r["workers"] == w]),
             "job_cpu_s_total": spread([sum(r["job_cpu_s"]) for r in runs if r["workers"] == w]),
             "job_s_median": statistics.median([s for r in runs if r["workers"] == w for s in r["job_s"]])}
            for w in (1, 2)]
    speedup = statistics.median(one) / statistics.median(two)
    # CPU-time-aware: the work (the jobs' own CPU seconds) over the busiest worker's share of it. On an idle machine
    # the wall ratio tends to this; other users' load lowers the wall ratio but not this one. `overlap` checks that
    # the 2-worker run did run its jobs side by side.
    cpu_one = [sum(r["job_cpu_s"]) for r in runs if r["workers"] == 1]
    cpu_two = [r["busiest_worker_cpu_s"] for r in runs if r["workers"] == 2]
    cpu_speedup = statistics.median(cpu_one) / statistics.median(cpu_two)
    overlap_two = statistics.median([r["overlap"] for r in runs if r["workers"] == 2])
    table = "\n".join([
        "| workers | sweep wall s (median, min–max) | jobs' CPU s in all (median) | job wall s (median) |",
        "|---|---|---|---|",
        *(f"| {r['workers']} | {r['wall_s']['median']:.1f} ({r['wall_s']['min']:.1f}–{r['wall_s']['max']:.1f}) | "
          f"{r['job_cpu_s_total']['median']:.1f} | {r['job_s_median']:.1f} |" for r in rows),
        "", (f"Speed-up, 2 workers over 1: **{speedup:.2f}×** in wall time (medians; per pair "
             f"{', '.join(f'{p:.2f}' for p in pairs)}); **{cpu_speedup:.2f}×** CPU-time-aware (the 1-worker run's job "
             f"CPU seconds over the busiest of the 2 workers' share); the 2-worker runs had two jobs running "
             f"{overlap_two:.0%} of the time.")])
    notes = [(f"{args.jobs} equal jobs: example_workflows/tiny/personalize_and_guide_tiny.json with {args.steps} "
              f"training steps, seeds 0..{args.jobs - 1}; local Ray (`ray.init(num_cpus=1|2)`), one CPU slot per job "
              "(Ray sets OMP_NUM_THREADS=1 in each worker); each sweep in a fresh Ray instance and results folder, so "
              "every run pays ComfyUI's start-up in its fresh worker(s)."),
             "Load average (1 min) before/after each run: " + "; ".join(
                 f"{r['workers']}w {r['load_before']:.2f}->{r['load_after']:.2f}" for r in runs) + ".",
             ("The machine is shared: other users' processes take CPU from the 2-worker runs first (both cores busy), "
              "so the wall ratio is a lower bound of what two idle cores give.")]
    print(table)
    md, js = write_results("sweeps_scaling", rows, table, notes,
                           extra={"runs": runs, "speedup": speedup, "cpu_speedup": cpu_speedup,
                                  "overlap_two_workers": overlap_two, "pairs": pairs, "order": order})
    print(f"[bench] wrote {md} and {js}")


if __name__ == "__main__":
    main()
