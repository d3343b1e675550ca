"""`./driftless bench sweeps [--jobs 4] [--steps 200] [--repeats 2]`: the same equal jobs (the tiny example workflow,
the same training length, seeds 0..jobs-1) run by `./driftless sweep` on a local Ray instance with 1 CPU slot and with 2,
each configuration into a fresh results folder, in the order 1 2 2 1 ... so drift in the machine's load hits both.

Reported per run: the sweep's wall time (submission to last result, ComfyUI's start-up in each fresh worker included),
the CPU seconds the jobs' worker processes spent (`time.process_time` in each job), and the load average before and
after: on a shared machine other users' work shows up as wall time the jobs' own CPU time does not explain.
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
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        log = io.StringIO()
        report = schedule.run_sweep(spec.load_sweep(spec_path, results), stream=log, poll_s=0.2)
    finally:
        ray.shutdown()
    if report["failed"] or report["done"] == 0:
        raise RuntimeError(f"the sweep did not finish cleanly:\n{log.getvalue()}")
    from ...sweeps.store import Store

    results_by_key = Store(results).finished()
    return {"workers": cpus, "wall_s": report["seconds"], "jobs": report["done"],
            "job_s": [r["seconds"] for r in results_by_key.values()],
            "job_cpu_s": [r["cpu_seconds"] for r in results_by_key.values()],
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench sweeps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="equal jobs per sweep (default 4)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per job (default 200)")
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
    table = "\n".join([
        "| workers | sweep wall s (median, min–max) | jobs' CPU s in all (median) | job wall s (median) |",
        "|---|---|---|---|",
        *(f"| {r['workers']} | {r['wall_s']['median']:.1f} ({r['wall_s']['min']:.1f}–{r['wall_s']['max']:.1f}) | "
          f"{r['job_cpu_s_total']['median']:.1f} | {r['job_s_median']:.1f} |" for r in rows),
        "", f"Speed-up, 2 workers over 1: **{speedup:.2f}×** (medians; per pair {', '.join(f'{p:.2f}' for p in pairs)})."])
    notes = [f"{args.jobs} equal jobs: example_workflows/tiny/personalize_and_guide_tiny.json with {args.steps} training "
             f"steps, seeds 0..{args.jobs - 1}; local Ray (`ray.init(num_cpus=1|2)`), one CPU slot per job (Ray sets "
             "OMP_NUM_THREADS=1 in each worker); each sweep in a fresh Ray instance and results folder, so every "
             "run pays ComfyUI's start-up in its fresh worker(s).",
             "Load average (1 min) before/after each run: " + "; ".join(
                 f"{r['workers']}w {r['load_before']:.2f}->{r['load_after']:.2f}" for r in runs) + ".",
             "The machine is shared: other users' processes take CPU from the 2-worker runs first (both cores busy), "
             "so the ratio is a lower bound of what two idle cores give."]
    print(table)
    md, js = write_results("sweeps_scaling", rows, table, notes,
                           extra={"runs": runs, "speedup": speedup, "pairs": pairs, "order": order})
    print(f"[bench] wrote {md} and {js}")


if __name__ == "__main__":
    main()
