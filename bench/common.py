"""Shared benchmark plumbing: paired (interleaved) timing, spread, and result files with provenance.

These machines drift ±10–25% between runs of the same code; measured A B A B … in one process the
drift between the two sides is a few percent. So every figure is a ratio of paired repeats, reported
as the median with the min–max over repeats.
"""

import datetime
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def positive_int(text: str) -> int:
    """argparse type for counts (steps, threads, workers, seeds per prompt): a whole number of at least 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1: give at least 1")
    return value


def add_sweep_options(parser, bench: str, workers_help: str, workers_default: int | None = None) -> None:
    """The options of a benchmark whose jobs run as a sweep (docs/sweeps.md): --workers (its help and default are the
    benchmark's), --address, --results (default .driftless/BENCH/NAME) and --dry-run."""
    parser.add_argument("--workers", type=positive_int, default=workers_default, help=workers_help)
    parser.add_argument("--address", help="run the jobs on a running Ray cluster instead ('auto': the one "
                        "`./driftless ray start` started here, or HEAD:6379); --workers is then ignored: the cluster "
                        "runs one job per GPU, else per --threads CPUs")
    parser.add_argument("--results", type=pathlib.Path,
                        help=f"the jobs' results folder (default .driftless/{bench}/NAME in the pack, git-ignored); a "
                        "rerun skips the jobs already there; on a cluster, a folder every node sees")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the jobs, their keys and which are already done in the results folder; run none")


def start(threads: int | None = None) -> None:
    """What a benchmark's command line does before its work: ComfyUI importable with its arguments set (this
    process's own argv left alone), and torch on `threads` threads when given (else torch's choice)."""
    from ..headless import host

    host.configure_args(host.find_comfyui(), None, cpu=None)
    if threads:
        import torch

        torch.set_num_threads(threads)


def synchronize() -> None:
    """Wait for queued GPU work, so a host clock read after it times what ran (a no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def clock() -> float:
    """perf_counter after the GPU's queue has drained: the timestamp every speed figure is taken with."""
    import time

    synchronize()
    return time.perf_counter()


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def bootstrap_ci(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the median of `values` (the sweeps' scipy.stats.bootstrap helper), seeded
    so that the same figures give the same interval."""
    import numpy as np

    from ..sweeps.summary import bootstrap_interval

    return bootstrap_interval(values, resamples=resamples, seed=seed, statistic=np.median)


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, rows: list[dict], markdown_table: str, notes: list[str], folder: pathlib.Path = RESULTS,
                  argv: list[str] | None = None, extra: dict | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """<folder>/<name>.{md,json} (default bench/results) with the date, the machine and the command that produced
    them (`argv`: the benchmark's arguments, default sys.argv[1:]); `extra` goes into the JSON as it is."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args = sys.argv[1:] if argv is None else argv
    command = "./driftless bench " + " ".join([name.split("_")[0], *(shlex.quote(a) for a in args)])
    meta = {"date": now, "command": command, "machine": machine()}
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps({**meta, "rows": rows, "notes": notes, **(extra or {})}, indent=2) + "\n")
    lines = [f"# {name}", "", f"- date: {now}", f"- command: `{command}`", f"- machine: {json.dumps(meta['machine'])}", ""]
    lines += [markdown_table, ""] + [f"- {n}" for n in notes]
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path
