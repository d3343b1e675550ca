"""A job function for sweeps without ComfyUI (spec `runner = "driftless.sweeps.examples.toy:run_job"`): the shape every
`runner` has, run_job(record, out_dir) -> {metric: number}, on a toy least-squares problem.

Each job fits y = w·x by `steps` of gradient descent on seeded data (axes `seed`, `steps`, and a `method` table with a
`learning_rate`), writes its weights to out_dir/weights.json and returns the final loss. `seconds` busy-waits that
long first (CPU work, for scaling checks); `fail` raises (for failure handling); `hold_file` waits until that file
exists (to stop a job mid-run from outside).
"""

import json
import pathlib
import random
import time


def run_job(record: dict, out_dir: pathlib.Path) -> dict:
    axes = record["axes"]
    method = axes.get("method", {})
    if method.get("fail"):
        raise ValueError(f"method {method.get('name')!r} fails on purpose")
    hold = method.get("hold_file")
    if hold:
        (out_dir / "partial.txt").write_text("started\n")
        while not pathlib.Path(hold).exists():
            time.sleep(0.02)
    end = time.process_time() + float(method.get("seconds", 0.0))
    while time.process_time() < end:
        pass
    rng = random.Random(axes.get("seed", 0))
    xs = [rng.uniform(-1, 1) for _ in range(32)]
    ys = [3.0 * x + rng.gauss(0, 0.1) for x in xs]
    w, lr = 0.0, float(method.get("learning_rate", 0.1))
    for _ in range(int(axes.get("steps", 20))):
        grad = sum(2 * (w * x - y) * x for x, y in zip(xs, ys)) / len(xs)
        w -= lr * grad
    loss = sum((w * x - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
    (out_dir / "weights.json").write_text(json.dumps({"w": w}) + "\n")
    return {"loss": loss, "w": w}
