"""Where a training step's time goes, per regularizer: host time, device time and kernel launches.

    ./driftless python -m driftless.bench.speed.profile [--architecture sd15-bench] [--dtype fp32] [METHOD ...]

Each method (bench/speed/regularizers.NAMES) is a TrainingRun on one shared model, as in the regularizer benchmark.
After warm-up steps, a few steps are profiled with torch.profiler (CPU activity, and CUDA activity on a GPU). Printed
per method: wall seconds per step, device (kernel) seconds per step, leaf aten operator calls and kernel launches
per step, and the operators with the most self time. When wall time is far above device time, the step is bound
by the host (Python, operator dispatch, launches), and a ratio between methods counts launches more than arithmetic.
"""

import argparse
import time

import torch

from ..common import clock


def profile_run(run, steps: int, warmup: int = 3) -> dict:
    """Profile `steps` calls of run.step() after `warmup` unprofiled ones."""
    from torch.profiler import ProfilerActivity, profile

    run.activate()
    for _ in range(warmup):
        run.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    start = clock()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run.step()
        clock()
    wall = (clock() - start) / steps
    events = prof.key_averages()
    return {"wall_s": wall, "device_s": device_seconds(events) / steps, "operators": leaf_operator_calls(prof.events()) / steps,
            "launches": sum(e.count for e in events if e.key in LAUNCHES) / steps, "events": events}


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")


def device_seconds(events) -> float:
    """Kernel time: the rows the profiler records on the GPU (operator rows repeat their kernels' time)."""
    from torch.autograd import DeviceType

    return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6


def leaf_operator_calls(events) -> int:
    """Calls of aten operators that call no other aten operator: the ones that do the work (each costs host
    dispatch; on a GPU most launch a kernel, views launch none)."""
    return sum(1 for e in events if e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children))


def main() -> None:
    from ...headless import host

    parser = argparse.ArgumentParser(prog="driftless.bench.speed.profile", description=__doc__)
    parser.add_argument("methods", nargs="*", help="regularizer benchmark methods (default: all)")
    parser.add_argument("--architecture", default="sd15-bench")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12, help="operators listed per method")
    args = parser.parse_args()
    host.configure_args(host.find_comfyui(), None, cpu=None)
    from . import regularizers, training

    model, clip, data = training.setup_with_clip(args.architecture)
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    summary = []
    for name in args.methods or regularizers.NAMES:
        t0 = time.perf_counter()
        run = regularizers.training_run(model, clip, data, name, args.rank, args.dtype)
        result = profile_run(run, args.steps)
        summary.append((name, result))
        print(f"\n=== {name} ({time.perf_counter() - t0:.0f} s) ===")
        print(result["events"].table(sort_by=sort, row_limit=args.top))
    print(f"\n{args.architecture}, {args.dtype}, rank {args.rank}, {args.steps} profiled steps (profiler overhead included)")
    print("| method | wall s/step | device s/step | leaf aten operator calls/step | kernel launches/step |\n|---|---|---|---|---|")
    for name, r in summary:
        print(f"| {name} | {r['wall_s']:.4f} | {r['device_s']:.4f} | {r['operators']:.0f} | {r['launches']:.0f} |")


if __name__ == "__main__":
    main()
