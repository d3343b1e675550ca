"""`./driftless bench prior [--seeds N] [--weights DIR]`: does the shapes model draw what its prior prompts name?

The drift benchmark scores drift as a change from the base model's samples of its prior prompts; that only
measures drift if the base model draws those prompts right. This samples the base model on the drift
benchmark's prior prompts with the drift benchmark's sampler (bench/drift/benchmark.py: Euler, normal schedule,
its steps and CFG), N fixed seeds per prompt (100, 101, …: the benchmark's seeds first), reads every sample
with the shapes classifier, and reports per prompt and overall the share of samples with the prompted shape,
colour, and both (the prior accuracy), each with a 95% percentile-bootstrap interval (shapes/metrics.py).
With --vae N it also checks the VAE the samples come through: N fresh renders of the pretraining set (seed
999), their pixel RMSE after the VAE's round trip, and the classifier's readings of the renders and of their
reconstructions per shape, the same bootstrap intervals.
Writes bench/results/prior.{md,json} (or prior_<suffix>).
"""

import argparse
import json
import pathlib
import time
from functools import partial

from ..common import positive_int, start


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="driftless bench prior", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=positive_int, default=32, help="samples per prompt (fixed seeds 100, 101, …; default 32)")
    p.add_argument("--weights", type=pathlib.Path,
                   help="a weights folder (shipped layout, or a pretraining build's folder); default: the shipped model")
    p.add_argument("--all-captions", action="store_true",
                   help="every caption of the pretraining set (36) instead of the drift benchmark's prior prompts")
    p.add_argument("--cfg", type=float, help="CFG scale (default: the drift benchmark's)")
    p.add_argument("--sampler-steps", type=positive_int, help="sampler steps (default: the drift benchmark's)")
    p.add_argument("--suffix", help="write bench/results/prior_<suffix>.{md,json} instead of prior.{md,json}")
    p.add_argument("--grid", type=pathlib.Path, help="also save the samples as a PNG grid (one row per prompt)")
    p.add_argument("--vae", type=positive_int, metavar="N",
                   help="also check the VAE on N fresh renders (768 gives the docs' figures): round-trip pixel RMSE, and the "
                   "classifier's readings of renders and of their reconstructions, per shape")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def measure(folder: pathlib.Path, prompts: list[tuple[str, str, str]], seeds: list[int], cfg: float, steps: int) -> tuple[dict, dict]:
    """(breakdown, samples): prior_breakdown of the samples of each (shape, colour, background) prompt at `seeds`,
    and the decoded samples by caption."""
    import comfy.samplers
    import torch

    from ...shapes import classifier, dataset, metrics, weights
    from ..drift.benchmark import Sampler, base_guider

    model, clip, vae = weights.load_model(folder)
    net = weights.load_classifier(folder)
    sampler = Sampler(model, clip, vae)
    sampler.sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)

    guider = partial(base_guider, model, cfg=cfg)

    samples, names, shape_pred, colour_pred, shape_true, colour_true = {}, [], [], [], [], []
    for shape, colour, background in prompts:
        caption = dataset.caption(shape, colour, background)
        images = sampler.images(guider, caption, seeds)
        samples[caption] = images
        s, c = classifier.predict(net, images)
        shape_pred += s.tolist()
        colour_pred += c.tolist()
        shape_true += [dataset.SHAPES.index(shape)] * len(seeds)
        colour_true += [list(dataset.COLOURS).index(colour)] * len(seeds)
        names += [caption] * len(seeds)
    t = torch.tensor
    return metrics.prior_breakdown(names, t(shape_pred), t(colour_pred), t(shape_true), t(colour_true)), samples


VAE_SEED, VAE_BATCH = 999, 128  # the renders' seed (not one the pretraining drew from) and the round trip's batch


def vae_check(folder: pathlib.Path, n: int) -> dict:
    """The VAE of `folder` on n fresh renders: pixel RMSE of the round trip (encode, decode), and the shapes
    classifier's breakdown (metrics.prior_breakdown, one row per shape) on the renders and on the reconstructions."""
    import torch

    from ...shapes import classifier, dataset, metrics, weights

    _, _, vae = weights.load_model(folder)
    net = weights.load_classifier(folder)
    renders, pictures = dataset.draw(n, VAE_SEED)
    shapes, colours = dataset.labels(pictures)
    with torch.no_grad():
        rebuilt = torch.cat([vae.decode(vae.encode(renders[i:i + VAE_BATCH])).float().clamp(0, 1)
                             for i in range(0, n, VAE_BATCH)])
    names = [dataset.SHAPES[int(i)] for i in shapes]
    readings = {}
    for label, images in (("renders", renders), ("reconstructions", rebuilt)):
        s, c = classifier.predict(net, images)
        readings[label] = metrics.prior_breakdown(names, torch.as_tensor(s), torch.as_tensor(c), shapes, colours)
    return {"n": n, "seed": VAE_SEED, "rmse": float(((rebuilt - renders) ** 2).mean().sqrt()), "readings": readings}


def table(breakdown: dict, key: str = "prompt", total: str = "**all prompts**") -> str:
    pct = f"{round(100 * breakdown['confidence'])}%"
    cell = lambda v: f"{v['share']:.3f} ({v['low']:.2f}–{v['high']:.2f})"  # noqa: E731
    lines = [f"| {key} | n | shape and colour ({pct} interval) | shape | colour |", "|---|---|---|---|---|"]
    for prompt, r in [*breakdown["per_prompt"].items(), (total, breakdown["overall"])]:
        lines.append(f"| {prompt} | {r['n']} | {cell(r['both'])} | {cell(r['shape'])} | {cell(r['colour'])} |")
    return "\n".join(lines)


def vae_table(check: dict) -> str:
    """The VAE check as text: its RMSE, then one table per kind of image the classifier read."""
    parts = [f"VAE round trip on {check['n']} fresh renders (seed {check['seed']}): pixel RMSE {check['rmse']:.3f}"]
    for label, breakdown in check["readings"].items():
        parts += ["", f"The classifier on the {label}:", "", table(breakdown, "shape", f"**all {label}**")]
    return "\n".join(parts)


def save_grid(samples: dict, path: pathlib.Path, columns: int = 16) -> None:
    """The first `columns` samples of each prompt, one row per prompt, at 2x."""
    import numpy as np
    from PIL import Image

    rows = [np.concatenate(list(images[:columns].numpy()), axis=1) for images in samples.values()]
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    start(args.threads)
    import torch

    from ...shapes import dataset, pretrain, weights
    from ..common import write_results
    from ..drift import benchmark

    folder = args.weights or weights.ensure(weights.SHIPPED_PRESET)
    prompts = [(s, c, b) for s in dataset.SHAPES for c in dataset.COLOURS for b in dataset.BACKGROUNDS] \
        if args.all_captions else list(benchmark.PRIOR)
    cfg = benchmark.CFG if args.cfg is None else args.cfg
    steps = benchmark.SAMPLER_STEPS if args.sampler_steps is None else args.sampler_steps
    seeds = list(range(100, 100 + args.seeds))
    started, cpu = time.perf_counter(), time.process_time()
    breakdown, samples = measure(folder, prompts, seeds, cfg, steps)
    check = vae_check(folder, args.vae) if args.vae else None
    elapsed = {"wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu, 1)}
    text = table(breakdown) + (f"\n\n{vae_table(check)}" if check else "")
    print(text)
    report_path = folder / pretrain.REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    notes = [
        f"model: {folder} (UNet {report.get('settings', {}).get('unet_steps', '?')} steps; recipe "
        f"{weights.recorded_recipe(folder)})",
        f"prompts: {'every pretraining caption' if args.all_captions else 'the drift benchmark prior prompts'} "
        f"({len(prompts)}), {len(seeds)} seeds each ({seeds[0]}–{seeds[-1]})",
        f"sampling: euler, normal schedule, {steps} steps, cfg {cfg}; read by the shapes classifier",
        "interval: 95% percentile bootstrap over the samples (per prompt: that prompt's samples)",
        f"time: {elapsed['wall_s']} s wall, {elapsed['cpu_s']} s CPU, {torch.get_num_threads()} threads",
    ]
    name = f"prior_{args.suffix}" if args.suffix else "prior"
    rows = [{"prompt": p, **r} for p, r in breakdown["per_prompt"].items()] + [{"prompt": "all", **breakdown["overall"]}]
    md, js = write_results(name, rows, text, notes, extra={"settings": {"cfg": cfg, "sampler_steps": steps, "seeds": seeds},
                                                                      **({"vae": check} if check else {})})
    if args.grid:
        save_grid(samples, args.grid)
    print(f"[bench] wrote {md} and {js}" + (f" and {args.grid}" if args.grid else ""))


if __name__ == "__main__":
    main()
