"""`./driftless bench drift [--preset full|quick]`: pretrain (cached), personalize, score; table and plot."""

import argparse

from ...headless import host


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench drift", description=__doc__)
    parser.add_argument("--preset", choices=("full", "quick"), default="full",
                        help="pretraining size: full (<= 20 min on 2 idle cores, cached) or quick (a quarter of it)")
    parser.add_argument("--pretrain-only", action="store_true", help="build (or find) the cached model and stop")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=100, help="personalization steps per method")
    parser.add_argument("--variants", action="store_true",
                        help="plain LoRA against weaker regularizer settings and APT without its adaptive adjustment "
                        "(writes bench/results/drift_variants.*)")
    parser.add_argument("--score-every", type=int,
                        help="score every N steps along training (default: halfway and at the end); denser curves "
                        "make the matched-fidelity comparison finer")
    args = parser.parse_args()
    host.configure_args(host.find_comfyui(), None, cpu=None)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from . import pretrain

    folder = pretrain.ensure(pretrain.PRESETS[args.preset])
    print(f"[drift] model: {folder / pretrain.CHECKPOINT}")
    if args.pretrain_only:
        return
    from . import benchmark

    benchmark.main(folder, args)


if __name__ == "__main__":
    main()
