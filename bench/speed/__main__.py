"""`./driftless bench speed [--quick]`: print the table and write bench/results/speed_training.{md,json}."""

import argparse

from ...headless import host


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench speed", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (same ratios, wider spread)")
    parser.add_argument("--architecture", default="sd15-bench", help="tiny-model config to measure on")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--only", choices=("training", "regularizers", "guidance", "continual"), help="run one part of the benchmark")
    parser.add_argument("--repeats", type=int, help="paired repeats (default 5; 2 with --quick)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 8; 5 with --quick)")
    args = parser.parse_args()
    host.configure_args(host.find_comfyui(), None, cpu=None)
    from . import training
    from ..common import write_results

    repeats, steps = (2, 5) if args.quick else (5, 8)
    repeats, steps = args.repeats or repeats, args.steps or steps
    if args.only in (None, "training"):
        bench_training(args, repeats, steps, training, write_results)
    if args.only in (None, "regularizers"):
        bench_regularizers(args, repeats, steps, write_results)
    if args.only in (None, "guidance"):
        bench_guidance(args, repeats, steps + 4, write_results)
    if args.only in (None, "continual"):
        bench_continual(args, repeats, steps, write_results)


def bench_training(args, repeats, steps, training, write_results) -> None:
    from .peak import peak_memory

    rows = []
    for checkpointing in (False, True):
        print(f"[bench] training step, gradient checkpointing {checkpointing}: {repeats} paired repeats of {steps} steps")
        times = training.paired_step_times(args.architecture, repeats, steps, args.rank, checkpointing)
        mem = {w: peak_memory(w, args.architecture, steps, args.rank, checkpointing) for w in ("ours", "stock")}
        rows.append({"gradient_checkpointing": checkpointing, **times, "peak_growth_bytes": mem,
                     "memory_ratio": mem["ours"] / max(mem["stock"], 1)})
    header = "| gradient checkpointing | Driftless s/step | TrainLoraNode s/step | time ratio (median, min–max) | peak memory growth ours / stock (MB) | memory ratio |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        mb = {k: v / 2**20 for k, v in r["peak_growth_bytes"].items()}
        lines.append(
            f"| {r['gradient_checkpointing']} | {r['ours_s']['median']:.3f} | {r['stock_s']['median']:.3f} | "
            f"{r['ratio']['median']:.2f}× ({r['ratio']['min']:.2f}–{r['ratio']['max']:.2f}) | "
            f"{mb['ours']:.0f} / {mb['stock']:.0f} | {r['memory_ratio']:.2f}× |"
        )
    table = "\n".join(lines)
    print(table)
    notes = [
        f"model: {args.architecture}, LoRA rank {args.rank}, batch 1, fp32, AdamW, every Linear and Conv2d "
        "(TrainLoraNode also trains every bias and norm)",
        f"time: median step interval (first {training.WARMUP_STEPS} steps skipped), {repeats} repeats alternating "
        "Driftless / TrainLoraNode in one process",
        "memory: each trainer in a fresh subprocess; CPU figures are peak-RSS growth during training",
    ]
    md, js = write_results("speed_training", rows, table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_regularizers(args, repeats, steps, write_results) -> None:
    from . import regularizers
    from .peak import peak_memory

    print(f"[bench] regularizers: {repeats * steps} rounds of one step of every method, interleaved")
    result = regularizers.paired_ratios(args.architecture, repeats, steps, args.rank)
    for name in result:
        result[name]["peak_growth_bytes"] = peak_memory(name, args.architecture, steps, args.rank)
    plain_peak = max(result["plain"]["peak_growth_bytes"], 1)
    lines = ["| regularizer | s/step | time ratio to plain LoRA (median, min–max) | peak memory growth | memory ratio |",
             "|---|---|---|---|---|"]
    for name, r in result.items():
        ratio = r.get("ratio")
        ratio_text = f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1"
        lines.append(f"| {name} | {r['s_per_step']['median']:.3f} | {ratio_text} | "
                     f"{r['peak_growth_bytes'] / 2**20:.0f} MB | {r['peak_growth_bytes'] / plain_peak:.2f}× |")
    table = "\n".join(lines)
    print(table)
    notes = [
        f"model: {args.architecture}, LoRA rank {args.rank} on attention, batch 1, fp32; prior preservation draws one "
        "class micro-batch per step (class-image generation excluded)",
        f"{repeats * steps} rounds; in each round every method takes one optimizer step, in an order rotated every "
        "round; ratios are per round against plain LoRA (median, min–max)",
        "memory: each regularizer in a fresh subprocess; CPU figures are peak-RSS growth during training",
    ]
    md, js = write_results("speed_regularizers", [{"name": k, **v} for k, v in result.items()], table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_guidance(args, repeats, steps, write_results) -> None:
    from . import guidance

    print(f"[bench] guidance: {repeats} repeats of {steps} euler steps per guider, rotated order")
    result = guidance.paired_step_times(args.architecture, repeats, steps, args.rank)
    lines = ["| guider | s/step | ratio to stock CFG with the LoRA merged (median, min–max) |", "|---|---|---|"]
    for name, r in result.items():
        ratio = r["ratio_to_stock"]
        lines.append(f"| {name} | {r['s_per_step']['median']:.3f} | {ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f}) |")
    table = "\n".join(lines)
    print(table)
    notes = [
        f"model: {args.architecture}, LoRA rank {args.rank} on attention, cfg 5, s = 0.3, batch 1, fp32, euler",
        "stock CFG with the LoRA merged is plain CFG of the personalized model (the cost floor); the hooks "
        "construction is the same guidance as ours built from CreateHookLora-style conditioning hooks",
        f"each repeat samples with all three guiders in rotated order; median step interval after {guidance.WARMUP_STEPS} steps",
    ]
    md, js = write_results("speed_guidance", [{"name": k, **v} for k, v in result.items()], table, notes)
    print(f"[bench] wrote {md} and {js}")


def bench_continual(args, repeats, steps, write_results) -> None:
    from . import continual

    print(f"[bench] continual: {repeats * steps} rounds of one step of every method, interleaved")
    result = continual.paired_ratios(args.architecture, repeats, steps, args.rank)
    lines = ["| method | s/step | time ratio to plain LoRA (median, min–max) |", "|---|---|---|"]
    for name, r in result.items():
        ratio = r.get("ratio")
        ratio_text = f"{ratio['median']:.2f}× ({ratio['min']:.2f}–{ratio['max']:.2f})" if ratio else "1"
        lines.append(f"| {name} | {r['s_per_step']['median']:.3f} | {ratio_text} |")
    table = "\n".join(lines)
    print(table)
    notes = [
        f"model: {args.architecture}, LoRA rank {args.rank} on attention, batch 1, fp32; a pool of {continual.PAST} past "
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
