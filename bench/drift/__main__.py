"""`./driftless bench drift [--preset full|quick]`: the shapes model (shipped, or pretrained once), personalize, score."""

import argparse
import os

from ...headless import host


def main() -> None:
    parser = argparse.ArgumentParser(prog="driftless bench drift", description=__doc__)
    parser.add_argument("--preset", choices=("full", "quick"), default="full",
                        help="pretraining size: full (<= 20 min on 2 idle cores, cached) or quick (a quarter of it)")
    parser.add_argument("--pretrain-only", action="store_true", help="find (or build) the model's weights and stop")
    parser.add_argument("--rebuild-weights", action="store_true",
                        help="pretrain the full preset from its recipe and write the weights shipped in shapes/weights/, then stop")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--mode", choices=("full", "quick"), default="full",
                        help="full: every subject x 3 seeds x every method, 300 steps scored every 50 (bench/results/drift.*); quick: the "
                        "same subjects and seeds, plain LoRA, parameter anchor and APT, 100 steps scored at 50 and 100 (drift_quick.*)")
    parser.add_argument("--subjects", nargs="+", metavar="NAME",
                        help="subjects to personalize (default: all of bench/drift/grid.py SUBJECTS; --list shows them)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help="training seeds (default 0 1 2)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="methods to train (plain LoRA is always added: it is the matched-fidelity reference)")
    parser.add_argument("--prior", nargs="+", metavar="PROMPT",
                        help="prior prompts, e.g. 'red circle on black' (default: the six of benchmark.PRIOR)")
    parser.add_argument("--align", nargs="+", metavar="PROMPT",
                        help="text-alignment prompts 'a <colour> sks on a <background> background', given as "
                        "'blue on black' (default: the four of benchmark.ALIGN)")
    parser.add_argument("--steps", type=int, help="personalization steps per job (default: the mode's)")
    parser.add_argument("--score-every", type=int, help="with --steps: score every N steps (default: halfway and at the end)")
    parser.add_argument("--name", help="results file name under bench/results (default: drift or drift_quick)")
    parser.add_argument("--list", action="store_true", help="list the subjects, methods and default prompts, and stop")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    host.configure_args(host.find_comfyui(), None, cpu=None)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ...shapes import pretrain, weights

    if args.list:
        from . import benchmark, grid

        for s in grid.SUBJECTS.values():
            print(f"subject {s.name}: {s.shape}, rgb {s.colour}, {s.pattern}")
        print("methods:", ", ".join(dict.fromkeys(benchmark.METHODS + benchmark.VARIANTS)))
        print("prior prompts:", "; ".join(f"{c} {sh} on {b}" for sh, c, b in benchmark.PRIOR))
        print("align prompts:", "; ".join(f"{c} on {b}" for c, b in benchmark.ALIGN))
        return
    if args.rebuild_weights:
        settings = pretrain.PRESETS[weights.SHIPPED_PRESET]
        folder = weights.cache_dir(settings)
        if not weights.is_built(folder):
            weights.build(folder, settings)
        weights.ship(folder)
        print(f"[drift] shipped weights rebuilt from {folder} into {weights.SHIPPED} (recipe {weights.recipe_hash(settings)})")
        return
    folder = weights.ensure(args.preset)
    print(f"[drift] model: {folder} (recipe {weights.recorded_recipe(folder)})")
    if args.pretrain_only:
        return
    from . import benchmark

    benchmark.main(folder, args)


if __name__ == "__main__":
    main()
