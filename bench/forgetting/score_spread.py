"""`./driftless python -m driftless.bench.forgetting.score_spread [--temperature T]`: how peaked are the DC scores?

The DC score p(c_j | x) = softmax(−e_j / τ) (trainers/continual/scores.py; Jha et al., ICLR 2025, §3, after Li et al.,
ICCV 2023, eq. 5) sums each concept's squared denoising error over the latent, so the gaps between concepts' logits
grow with the latent's size; at τ = 1 (the paper's score and the node's default) a larger latent gives scores closer
to one-hot, and then the EWC-DC Fisher (gradients of −log p of the true concept) and DSC's soft targets carry little
beyond the arg-max. This learns one forgetting-benchmark sequence with EWC-DC + DSC (bench/forgetting/benchmark.py,
its defaults, 200 steps per concept), keeps every DC logit vector the Fisher passes and the consolidation compute, and
prints per pass and number of concepts K: the median of the softmax's largest probability, the share of score
vectors above 0.99, the quartiles of the gap between the two largest logits, and the latent's element count.
"""

import argparse
import contextlib

import torch

SEQUENCE = ("orange-cross", "cyan-square")


@contextlib.contextmanager
def recorded_logits(temperature: float | None):
    """Every dc_logits result of the Fisher pass (learn.py) and of DSC (dsc.py), by pass, while inside; with
    `temperature` every score uses it instead of the pool's."""
    from ...trainers.continual import dsc, learn, scores

    records = {"Fisher pass": [], "DSC": []}
    saved = {module: module.dc_logits for module in (learn, dsc)}

    def recording(name):
        def dc_logits(predictions, target, pool_temperature=1.0):
            out = scores.dc_logits(predictions, target, temperature or pool_temperature)
            records[name].append(out.detach().float().cpu())
            return out
        return dc_logits

    learn.dc_logits, dsc.dc_logits = recording("Fisher pass"), recording("DSC")
    try:
        yield records
    finally:
        for module, original in saved.items():
            module.dc_logits = original


def spread(logits: list[torch.Tensor]) -> dict[int, dict]:
    """Per number of concepts K: scores.sharpness of its score vectors and the quartiles of the top-2 logit gap."""
    from ...trainers.continual.scores import sharpness

    by_k: dict[int, list] = {}
    for row in logits:
        by_k.setdefault(row.shape[-1], []).append(row)
    out = {}
    for k, rows in sorted(by_k.items()):
        g = torch.cat(rows)
        ordered = g.sort(dim=-1, descending=True).values
        gap = ordered[:, 0] - ordered[:, 1]
        out[k] = {**sharpness(g), "gap_quartiles": [float(torch.quantile(gap, q)) for q in (0.25, 0.5, 0.75)]}
    return out


def main(argv=None) -> None:
    from ..common import positive_int, start

    parser = argparse.ArgumentParser(prog="driftless python -m driftless.bench.forgetting.score_spread", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperature", type=float, help="τ for every score (default: the pool's, 1)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.temperature is not None and not args.temperature > 0:
        parser.error(f"--temperature must be > 0, got {args.temperature}")
    start(args.threads)
    from ...shapes import dataset, weights
    from . import benchmark

    folder = weights.ensure(weights.SHIPPED_PRESET)
    job = benchmark.Job(SEQUENCE, "EWC-DC + DSC", args.seed, (("steps", 200), ("rank", 8), ("learning_rate", 1e-3)))
    with recorded_logits(args.temperature) as records:
        benchmark.run_job(job, folder)
    latent = benchmark.drift._context(folder)["vae"].encode(torch.zeros(1, dataset.SIZE, dataset.SIZE, 3)).shape
    print(f"sequence {' > '.join(SEQUENCE)}, EWC-DC + DSC, seed {args.seed}, τ = {args.temperature or 1}; "
          f"latent {tuple(latent[1:])} = {latent[1:].numel()} elements")
    for name, logits in records.items():
        for k, s in spread(logits).items():
            q = ", ".join(f"{v:.2f}" for v in s["gap_quartiles"])
            print(f"{name}, K = {k}: {s['score_vectors']} score vectors; largest probability median "
                  f"{s['median_largest_probability']:.3f}, above 0.99 in {s['share_sharp']:.0%}; top-2 logit gap quartiles {q}")


if __name__ == "__main__":
    main()
