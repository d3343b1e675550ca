"""`./driftless bench speed [--quick] [--only PART]`: print the tables and write bench/results/speed_<part>.{md,json}."""

import argparse
import time

from ...headless import host

MEMORY_NOTE = (" in a fresh subprocess; CPU figures are the peak of live tensor bytes during training (torch.profiler "
               "allocation records, in time order), the CPU analogue of torch.cuda.max_memory_allocated")


ONLY_WHEN_NAMED = ("apt-parts", "guidance-forward", "guidance-layers")


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench speed", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="under 5 minutes: fewer repeats and steps (same ratios, wider spread), peak memory over 2 "
                        "steps, the regularizers on the first architecture only")
    parser.add_argument("--architectures", default="sd15-bench,sdxl-bench",
                        help="model configs to measure on, comma-separated (tinymodels/configs.py: the SD1.5- and SDXL-shaped "
                        "bench sizes; sd15-full is SD1.5's real size, for a GPU)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--only", choices=("training", "regularizers", "apt-parts", "guidance", "guidance-forward", "guidance-layers",
                                                "metrics", "continual"),
                        help="run one part of the benchmark (apt-parts, APT's cost with one part on at a time; "
                        "guidance-forward, the guided forward against the stock one call by call; and guidance-layers, "
                        "each LoRA layer's stacked GEMM against the stock layer from a cold cache: run only when named)")
    parser.add_argument("--repeats", type=int, help="paired repeats (default 5; 2 with --quick)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 8; 5 with --quick)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--memory-steps", type=int,
                        help="optimizer steps of each peak-memory run (default: --steps; 2 with --quick: the peak is "
                        "reached by the second step, once the optimizer holds its state)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="training dtype of the regularizers part (bf16/fp16: autocast, as Train LoRA does on a GPU)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="guidance step time as wall seconds or as this process's CPU seconds (use cpu, with "
                        "--threads 1, on a machine shared with other work)")
    parser.add_argument("--metrics-size", choices=("bench", "wide", "tiny"), default="bench",
                        help="backbones of the metrics part (tinymodels/metrics_backbones.py): bench = 224 px, ViT-B/32 "
                        "and ViT-S/16 grids, narrow, 4 layers; wide = the same with the real widths")
    parser.add_argument("--resolution", type=int,
                        help="image side in pixels of the guidance-forward part (default: each model's own, 64 for the "
                        "bench models); the token count of real sampling is what decides a layer's arithmetic intensity")
    parser.add_argument("--suffix", default="", help="appended to the results' names (bench/results/speed_<part>_<suffix>"
                        ".md), e.g. to keep a run on other architectures beside the default one")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    host.configure_args(host.find_comfyui(), None, cpu=None)
    from . import training
    from ..common import write_results as write

    def write_results(name, *rest, **kwargs):  # quick and GPU runs write beside the full CPU results, not over them
        import torch

        suffix = ("_quick" if args.quick else "") + ("_cuda" if torch.cuda.is_available() else "")
        suffix += f"_{args.dtype}" if args.dtype != "fp32" else ""
        suffix += f"_{args.suffix}" if args.suffix else ""
        return write(name + suffix, *rest, **kwargs)

    repeats, steps = (2, 5) if args.quick else (5, 8)
    repeats, steps = args.repeats or repeats, args.steps or steps
    args.memory_steps = args.memory_steps or (2 if args.quick else steps)
    architectures = args.architectures.split(",")
    _check_resolution(parser, architectures, args.resolution)
    parts = {
        "training": lambda: bench_training(args, architectures, repeats, steps, training, write_results),
        # --quick: the regularizers on the first (SD1.5-shaped) model, as the README reports them; continual over 6 rounds
        "regularizers": lambda: bench_regularizers(args, architectures[:1] if args.quick else architectures, repeats, steps,
                                                   write_results),
        "apt-parts": lambda: bench_regularizers(args, architectures[:1], repeats, steps, write_results, "apt_parts"),
        "guidance": lambda: bench_guidance(args, architectures, repeats, steps + 4, write_results),
        "guidance-forward": lambda: bench_guidance_forward(args, architectures, 4 * repeats, write_results),
        "guidance-layers": lambda: bench_guidance_layers(args, architectures, 4 * repeats, write_results),
        "metrics": lambda: bench_metrics(args, repeats, write_results),
        "continual": lambda: bench_continual(args, architectures[0], repeats, 3 if args.quick else steps, write_results),
    }
    started = time.perf_counter()
    for name, part in parts.items():
        if args.only == name or (args.only is None and name not in ONLY_WHEN_NAMED):
            t0 = time.perf_counter()
            part()
            print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s")
    print(f"[bench] done in {time.perf_counter() - started:.0f} s")


def _check_resolution(parser, architectures: list[str], resolution: int | None) -> None:
    """Refuse, before any work, a --resolution that one of the models cannot sample at."""
    from ...tinymodels.configs import CONFIGS

    for architecture in architectures if resolution else []:
        largest = CONFIGS[architecture].largest_resolution if architecture in CONFIGS else None
        if largest is not None and resolution > largest:
            parser.error(f"--resolution {resolution}: {architecture} places images up to {largest} px (its "
                         "position-embedding grid); leave it out of --architectures or choose a smaller size")


def _measure_peaks(jobs: list[tuple]) -> list[int]:
    """Peak memory of each job (peak.peak_memories), after the timings: one fresh process per core at a time,
    each with one torch thread."""
    import os

    from .peak import peak_memories

    parallel = max(1, min(4, os.cpu_count() or 1))
    print(f"[bench] peak memory: {len(jobs)} fresh processes of {jobs[0][2]} steps, {parallel} at a time")
    t0 = time.perf_counter()
    peaks = peak_memories(jobs, parallel)
    print(f"[bench] peak memory measured in {time.perf_counter() - t0:.0f} s")
    return peaks


def _checkpointing(row: dict) -> str:
    ours, stock = row["gradient_checkpointing"], row["stock_checkpointing"]
    return f"{ours}" if ours == stock else f"{ours} / {stock} (each node's default)"


def bench_training(args, architectures, repeats, steps, training, write_results) -> None:
    from . import roofline

    rows, rooflines = [], []
    gflops = roofline.matmul_gflops()
    from ...trainers.config import TrainConfig

    # (ours, stock) gradient checkpointing: both off, both on, then each node at its default (0.33's TrainLoraNode: on)
    settings = ((False, False), (True, True), (TrainConfig().gradient_checkpointing, True))
    for architecture in architectures:
        for checkpointing, stock_checkpointing in settings:
            print(f"[bench] {architecture} training step, gradient checkpointing ours {checkpointing} / stock "
                  f"{stock_checkpointing}: {repeats} paired repeats of {steps} steps")
            times = training.paired_step_times(architecture, repeats, steps, args.rank, checkpointing, stock_checkpointing)
            rows.append({"architecture": architecture, "gradient_checkpointing": checkpointing,
                         "stock_checkpointing": stock_checkpointing, **times})
    jobs = [(w, r["architecture"], args.memory_steps, args.rank,
             r["gradient_checkpointing"] if w == "ours" else r["stock_checkpointing"]) for r in rows
            for w in ("ours", "stock") if w == "ours" or "stock_error" not in r]
    peaks = iter(_measure_peaks(jobs))
    for r in rows:
        mem = {w: next(peaks) for w in ("ours", "stock") if w == "ours" or "stock_error" not in r}
        r.update(peak_growth_bytes=mem, memory_ratio=mem["ours"] / max(mem.get("stock", 0), 1) if "stock" in mem else None)
    for architecture in architectures:
        model, data = training._setup(architecture)
        plain = next(r for r in rows if r["architecture"] == architecture and not r["gradient_checkpointing"]
                     and not r["stock_checkpointing"])
        line = roofline.line(roofline.training_step_flops(model, data, args.rank), gflops, plain["ours_s"]["median"])
        rooflines.append({"architecture": architecture, **line})
    header = ("| model | gradient checkpointing (ours / stock) | Driftless s/step | TrainLoraNode s/step | time ratio (median, min–max) "
              "| peak memory growth ours / stock (MiB) | memory ratio |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        mb = {k: v / 2**20 for k, v in r["peak_growth_bytes"].items()}
        if "stock_error" in r:
            lines.append(f"| {r['architecture']} | {_checkpointing(r)} | {r['ours_s']['median']:.3f} | fails: "
                         f"{r['stock_error']} | – | {mb['ours']:.0f} / – | – |")
            continue
        lines.append(
            f"| {r['architecture']} | {_checkpointing(r)} | {r['ours_s']['median']:.3f} | {r['stock_s']['median']:.3f} | "
            f"{r['ratio']['median']:.2f}× ({r['ratio']['min']:.2f}–{r['ratio']['max']:.2f}) | "
            f"{mb['ours']:.0f} / {mb['stock']:.0f} | {r['memory_ratio']:.2f}× |"
        )
    table = "\n".join(lines)
    print(table)
    for r in rooflines:
        print(f"[bench] {r['architecture']} {roofline.describe(r)}")
    notes = [
        f"models: {', '.join(architectures)}; LoRA rank {args.rank}, batch 1, fp32, AdamW, every Linear and Conv2d "
        "(TrainLoraNode also trains every bias and norm)",
        *[f"{r['architecture']} (no checkpointing) {roofline.describe(r)}" for r in rooflines],
        f"time: median step interval (first {training.WARMUP_STEPS} steps skipped), {repeats} repeats alternating "
        "Driftless / TrainLoraNode in one process",
        f"memory: each trainer{MEMORY_NOTE}, {args.memory_steps} steps, one torch thread",
    ]
    md, js = write_results("speed_training", rows + [{"roofline": r} for r in rooflines], table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_regularizers(args, architectures, repeats, steps, write_results, which="regularizers") -> None:
    """Every regularizer (or, which="apt_parts", APT one part at a time) against plain LoRA, rotated in one run."""
    from . import regularizers

    names = regularizers.APT_PART_NAMES if which == "apt_parts" else regularizers.NAMES
    rows = []
    lines = ["| model | regularizer | s/step | time ratio to plain LoRA (median, min–max) | peak memory growth | memory ratio |",
             "|---|---|---|---|---|---|"]
    results = {}
    for architecture in architectures:
        print(f"[bench] {architecture} regularizers: {repeats * steps} rounds of one step of every method, interleaved")
        results[architecture] = regularizers.paired_ratios(architecture, repeats, steps, args.rank, args.dtype, names)
    jobs = [(name, architecture, args.memory_steps, args.rank, False, args.dtype) for architecture, result in results.items()
            for name in result]
    peaks = iter(_measure_peaks(jobs))
    for architecture, result in results.items():
        for name in result:
            result[name]["peak_growth_bytes"] = next(peaks)
        plain_peak = max(result["plain"]["peak_growth_bytes"], 1)
        for name, r in result.items():
            ratio = r.get("ratio")
            ratio_text = f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1"
            lines.append(f"| {architecture} | {name} | {r['s_per_step']['median']:.3f} | {ratio_text} | "
                         f"{r['peak_growth_bytes'] / 2**20:.0f} MiB | {r['peak_growth_bytes'] / plain_peak:.2f}× |")
            rows.append({"architecture": architecture, "name": name, **r})
    table = "\n".join(lines)
    print(table)
    notes = [
        f"models: {', '.join(architectures)}; LoRA rank {args.rank} on attention, batch 1, {args.dtype}; prior preservation draws one "
        "class micro-batch per step (class-image generation excluded)",
        f"{repeats * steps} rounds; in each round every method takes one optimizer step, in an order rotated every "
        "round; ratios are per round against plain LoRA (median, min–max)",
        f"memory: each regularizer{MEMORY_NOTE}, {args.memory_steps} steps, one torch thread",
    ]
    md, js = write_results(f"speed_{which}", rows, table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_guidance(args, architectures, repeats, steps, write_results) -> None:
    from . import guidance

    rows = []
    lines = ["| model | guider | s/step | ratio to stock CFG with the LoRA merged (median, min–max) |", "|---|---|---|---|"]
    for architecture in architectures:
        print(f"[bench] {architecture} guidance: {repeats} repeats of {steps} euler steps per guider, rotated order")
        result = guidance.paired_step_times(architecture, repeats, steps, args.rank, args.clock)
        for name, r in result.items():
            ratio = r["ratio_to_stock"]
            lines.append(f"| {architecture} | {name} | {r['s_per_step']['median']:.3f} | "
                         f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f}) |")
            rows.append({"architecture": architecture, "name": name, **r})
    table = "\n".join(lines)
    print(table)
    notes = [
        f"models: {', '.join(architectures)}; LoRA rank {args.rank} on attention, cfg 5, s = 0.3, batch 1, fp32, euler",
        "stock CFG with the LoRA merged is plain CFG of the personalized model (the cost floor); the hooks "
        "construction is the same guidance as ours built from CreateHookLora-style conditioning hooks",
        f"each repeat samples with all three guiders in rotated order; median step interval after {guidance.WARMUP_STEPS} steps, "
        f"in {'CPU' if args.clock == 'cpu' else 'wall'} seconds",
    ]
    md, js = write_results("speed_guidance", rows, table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_guidance_forward(args, architectures, pairs, write_results) -> None:
    from . import guidance

    rows = []
    lines = ["| model | LoRA layers (split) | stock forward s | guided forward / stock forward: median (bootstrap 95% CI), "
             "min–max |", "|---|---|---|---|"]
    for architecture in architectures:
        print(f"[bench] {architecture} guided forward: {pairs} pairs of batched cond+uncond forwards, alternating")
        r = guidance.paired_forward_ratios(architecture, pairs, args.rank, args.clock, args.resolution)
        ratio = r["ratio"]
        lines.append(f"| {architecture} | {r['lora_layers']} ({r['split_layers']}) | {r['stock_s_per_forward']['median']:.4f} | "
                     f"{ratio['median']:.3f}× ({ratio['ci95'][0]:.3f}–{ratio['ci95'][1]:.3f}), "
                     f"{ratio['min']:.2f}–{ratio['max']:.2f} |")
        rows.append({"architecture": architecture, **r})
    table = "\n".join(lines)
    print(table)
    notes = [
        f"models: {', '.join(architectures)}; LoRA rank {args.rank} on attention, s = 0.3, batch 1 (cond + uncond rows), fp32, "
        f"{args.resolution or 'the model default'} px",
        "each pair: the guider's loaded clone (LoRA merged at 1) runs the same captured batched forward once with its "
        "branch layers removed (stock CFG's forward) and once installed (the null rows through W + s·Δ), in "
        f"alternating order, each after a warm-up call; {'CPU' if args.clock == 'cpu' else 'wall'} seconds",
    ]
    md, js = write_results("speed_guidance_forward", rows, table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_guidance_layers(args, architectures, pairs, write_results) -> None:
    import torch

    from . import guidance

    scales = (1, 4)
    rows = []
    lines = ["| model | split LoRA layers | second weights MB | " + " | ".join(
        f"rows ×{k}: stock layers ms; extra ms (ratio) stacked, corrected" for k in scales)
        + " | stacked extra µs per MB of second weight (×1, ×4) |", "|---|---|---|" + "---|" * (len(scales) + 1)]
    for architecture in architectures:
        print(f"[bench] {architecture} guided LoRA layers: {pairs} rounds per layer and row scale, cold cache")
        r = guidance.layer_costs(architecture, args.rank, pairs, scales, args.resolution, args.clock)
        megabytes = r["scales"][1]["second_weight_bytes"] / 1e6
        cells = [f"{s['stock_s'] * 1e3:.2f}; {s['extra_s'] * 1e3:+.2f} ({s['ratio']:.3f}×), "
                 f"{s['correction_extra_s'] * 1e3:+.2f} ({s['correction_ratio']:.3f}×)" for s in r["scales"].values()]
        per_mb = ", ".join(f"{s['extra_s'] * 1e6 / megabytes:.0f}" for s in r["scales"].values())
        lines.append(f"| {architecture} | {r['split_layers']} | {megabytes:.1f} | " + " | ".join(cells) + f" | {per_mb} |")
        rows.append({"architecture": architecture, **r})
    table = "\n".join(lines)
    print(table)
    notes = [
        f"models: {', '.join(architectures)}; LoRA rank {args.rank} on attention, s = 0.3, fp32, "
        f"{args.resolution or 'the model default'} px; each layer on its input in one captured guided forward "
        "(cond + uncond rows), and on that input with each token repeated 4 times (rows ×4)",
        "per layer, in rotated order: the stock layer (the merged weight on every row, F.linear), the guider's stacked "
        "layer (one baddbmm against [W₁, W + s·Δ]) and the activation correction (F.linear, then (s − 1)·Δ(x) added on "
        f"the null rows, guidance/branch_weights.correct); {pairs} rounds after one warm-up round, a 64 MB buffer written "
        "before each call so that weights come from memory; medians per layer, summed over the layers; "
        + ("CPU seconds" if args.clock == "cpu" and not torch.cuda.is_available() else "wall seconds, synchronized"),
    ]
    md, js = write_results("speed_guidance_layers", rows, table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_metrics(args, repeats, write_results) -> None:
    import torch

    from . import metrics

    print(f"[bench] metrics: CLIP-T, CLIP-I and DINO on 16 generated + 4 reference images, {repeats} rotated repeats")
    result = metrics.paired_times(repeats, size=args.metrics_size)
    lines = ["| path | s per evaluation (median, min–max) | speed-up over the loop, one metric at a time | "
             "speed-up over the loop, CLIP embedding shared |", "|---|---|---|---|"]
    for name, r in result["sides"].items():
        sec, a, b = r["seconds"], r["speedup_vs_per_metric_loop"], r["speedup_vs_shared_loop"]
        lines.append(f"| {name} | {sec['median']:.3f} ({sec['min']:.3f}–{sec['max']:.3f}) | "
                     f"{a['median']:.2f}× ({a['min']:.2f}–{a['max']:.2f}) | {b['median']:.2f}× ({b['min']:.2f}–{b['max']:.2f}) |")
    table = "\n".join(lines)
    print(table)
    notes = [
        "backbones: " + result["description"] + f" (size '{args.metrics_size}')",
        "images: 16 generated and 4 reference photos (skimage.data, 512x512); 4 prompts, each for 4 consecutive images",
        f"per-image loops: {result['processor_class']} + CLIPModel / ViTImageProcessor + ViTModel on one PIL image at a "
        "time, reference embeddings once per evaluation; 'one metric at a time' runs CLIP-T (processor(text, images), "
        "both towers, as torchmetrics' CLIPScore), CLIP-I and DINO as separate loops; 'shared' computes each CLIP image "
        "embedding once for CLIP-I and CLIP-T",
        "cold: the references are embedded in the timed call; warm: they come from the embedding cache",
        f"largest difference between the loops' and our three means: {result['max_abs_difference_of_means']:.1e}",
        f"torch threads: {torch.get_num_threads()}; {repeats} repeats after a warm-up, the four paths in "
        "rotated order; speed-up per repeat (loop time / path time)",
    ]
    rows = [{"name": k, **v} for k, v in result["sides"].items()]
    name = "speed_metrics" + ("" if args.metrics_size == "bench" else f"_{args.metrics_size}")
    name += f"_{args.threads}thread" if args.threads else ""
    md, js = write_results(name, rows, table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_continual(args, architecture, repeats, steps, write_results) -> None:
    """Continual personalization's per-step cost on the first model of --architectures (SD1.5-shaped by default)."""
    from . import continual

    print(f"[bench] continual: {repeats * steps} rounds of one step of every method, interleaved")
    result = continual.paired_ratios(architecture, repeats, steps, args.rank)
    lines = ["| method | s/step | time ratio to plain LoRA (median, min–max) |", "|---|---|---|"]
    for name, r in result.items():
        ratio = r.get("ratio")
        ratio_text = f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1"
        lines.append(f"| {name} | {r['s_per_step']['median']:.3f} | {ratio_text} |")
    table = "\n".join(lines)
    print(table)
    notes = [
        f"model: {architecture}, LoRA rank {args.rank} on attention, batch 1, fp32; a pool of {continual.PAST} past "
        "concepts (random LoRAs and Fisher)",
        f"{repeats * steps} rounds; in each round every method takes one optimizer step, in an order rotated every "
        "round; ratios are per round against plain LoRA (median, min–max)",
        "EWC-DC: the penalty (λ/2)·Σ F·(θ − θ*)²; DSC k: the consolidation run with k past concepts per DC score "
        "(+ the EWC penalty); the Fisher pass runs once per concept, its time per draw is given against one plain step",
    ]
    md, js = write_results("speed_continual", [{"name": k, **v} for k, v in result.items()], table, notes)
    print(f"[bench] wrote {md} and {js}")


if __name__ == "__main__":
    main()
