"""Peak memory growth of one training run, measured in a fresh process.

    python -m driftless.bench.speed.peak ours|stock|REGULARIZER ARCHITECTURE STEPS RANK [checkpointing]

CUDA: torch.cuda.max_memory_allocated minus the memory allocated before it. CPU: the same quantity, the
peak of live tensor bytes above the start, read off torch.profiler's allocation records (every allocation and
free with its own timestamp; summing per operator instead, in start order, misses frees and allocations
nested in an enclosing scope, such as a custom autograd function, and can report a peak too low). Peak
resident memory is not used on CPU: glibc keeps freed blocks mapped, so RSS growth depends on allocation history more than on what a method keeps alive.
Prints JSON.
"""

import json
import subprocess
import sys


def measure(run) -> int:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - before
    return peak_tensor_bytes(run)


def peak_tensor_bytes(run) -> int:
    """Peak growth of live CPU tensor bytes while `run()` executes: the running sum of torch.profiler's
    allocation records (each allocation and free, with its own timestamp), in time order."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    cpu = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() in cpu)
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memories(jobs: list[tuple], parallel: int = 1) -> list[int]:
    """Peak memory growth of each (which, architecture, steps, rank, checkpointing[, dtype]), each in a fresh process with one
    torch thread; `parallel` processes at a time (the quantity is tensor bytes, not time: parallel runs leave it be)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "DRIFTLESS_PEAK_THREADS": "1"}

    def one(job):
        which, architecture, steps, rank, checkpointing, *dtype = job
        args = [which, architecture, str(steps), str(rank), "1" if checkpointing else "0", *dtype]
        out = subprocess.run([sys.executable, "-m", "driftless.bench.speed.peak", *args], capture_output=True, text=True,
                             timeout=1800, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"peak memory of {job} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"]

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(one, jobs))


def main(argv: list[str]) -> None:
    import os

    import torch

    from ...headless import host

    if os.environ.get("DRIFTLESS_PEAK_THREADS"):
        torch.set_num_threads(int(os.environ["DRIFTLESS_PEAK_THREADS"]))
    host.configure_args(host.find_comfyui(), None, cpu=None)
    import comfy.model_management

    from . import regularizers, training

    which, architecture, steps, rank, checkpointing = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4] == "1"
    dtype = argv[5] if len(argv) > 5 else "fp32"
    model, clip, data = training.setup_with_clip(architecture)
    comfy.model_management.load_models_gpu([model])
    if which == "ours":
        run = lambda: training.run_ours(model, data, steps, rank, checkpointing)  # noqa: E731
    elif which == "stock":
        run = lambda: training.run_stock(model, data, steps, rank, checkpointing)  # noqa: E731
    else:
        run = lambda: regularizers.run(model, clip, data, which, steps, rank, dtype)  # noqa: E731
    print(json.dumps({"peak_growth_bytes": measure(run)}))


if __name__ == "__main__":
    main(sys.argv[1:])
