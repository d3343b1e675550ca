"""`./driftless bench drift [--preset full|quick]`: the shapes model (shipped, or pretrained once), personalize, score."""

import argparse

from ...headless import host


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench drift", description=__doc__)
    parser.add_argument("--preset", choices=("full", "quick"), default="full",
                        help="pretraining size: full (<= 20 min on 2 idle cores, cached) or quick (a quarter of it)")
    parser.add_argument("--pretrain-only", action="store_true", help="find (or build) the model's weights and stop")
    parser.add_argument("--rebuild-weights", action="store_true",
                        help="pretrain the full preset from its recipe and write the weights shipped in shapes/weights/, then stop")
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
    from ...shapes import pretrain, weights

    if args.rebuild_weights:
        settings = pretrain.PRESETS[weights.SHIPPED_PRESET]
        folder = weights.cache_dir(settings)
        if not weights.is_built(folder):
            weights.build(folder, settings)
        weights.ship(folder)
        print(f"[drift] shipped weights rebuilt from {folder} into {weights.SHIPPED} (recipe {weights.recipe_hash(settings)})")
        return
    folder = weights.ensure(args.preset)
    print(f"[drift] model: {folder / pretrain.CHECKPOINT}")
    if args.pretrain_only:
        return
    from . import benchmark

    benchmark.main(folder, args)


if __name__ == "__main__":
    main()
