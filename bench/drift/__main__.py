"""`./driftless bench drift [--mode full|quick]`: the shapes model (shipped, or pretrained once), personalize, score.

Every (subject, method, seed) job runs as a sweep job on Ray (docs/sweeps.md): one at a time on this machine by
default, --workers 2 for two at once, --address for a cluster. Finished jobs are kept in the results folder by a
key of the job, the model's recipe, the sampling settings and the code: a rerun (after Ctrl+C, a failure or a crash) runs only
what is missing, then writes the tables from every job.
"""

import argparse
import os
import sys

from ..common import add_sweep_options, positive_int, start


def main() -> int:
    parser = argparse.ArgumentParser(prog="driftless bench drift", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("full", "quick"), default="full",
                        help="pretraining size: full (<= 20 min on 2 idle cores, cached) or quick (a quarter of it)")
    parser.add_argument("--pretrain-only", action="store_true", help="find (or build) the model's weights and stop")
    parser.add_argument("--rebuild-weights", action="store_true",
                        help="pretrain the full preset from its recipe and write the weights shipped in shapes/weights/, then stop")
    parser.add_argument("--threads", type=positive_int,
                        help="torch threads (and Ray CPU slots) per job (default 1, as every recorded run used); also "
                        "the threads of a pretraining this command runs (default: torch's choice)")
    add_sweep_options(parser, "drift", "jobs at once on this machine, each in its own Ray worker (default 1, so wall "
                      "and CPU times stay comparable with the recorded runs; 2 runs two at once, about half the wall "
                      "time on two idle cores: docs/sweeps.md, measured scaling)", workers_default=1)
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
    parser.add_argument("--steps", type=positive_int, help="personalization steps per job (default: the mode's)")
    parser.add_argument("--score-every", type=positive_int, help="with --steps: score every N steps (default: halfway and at the end)")
    parser.add_argument("--name", help="results file name under bench/results (default: drift or drift_quick)")
    parser.add_argument("--list", action="store_true", help="list the subjects, methods and default prompts, and stop")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    start(args.threads)
    from ...shapes import pretrain, weights

    if args.list:
        from . import benchmark, grid

        print("\n".join(s.describe() for s in grid.SUBJECTS.values()))
        print("methods:", "; ".join(dict.fromkeys(benchmark.METHODS + benchmark.VARIANTS)))
        print("prior prompts:", "; ".join(f"{c} {sh} on {b}" for sh, c, b in benchmark.PRIOR))
        print("align prompts:", "; ".join(f"{c} on {b}" for c, b in benchmark.ALIGN))
        return 0
    if args.rebuild_weights:
        settings = pretrain.PRESETS[weights.SHIPPED_PRESET]
        folder = weights.cache_dir(settings)
        if not weights.is_built(folder):
            weights.build(folder, settings)
        weights.ship(folder)
        print(f"[drift] shipped weights rebuilt from {folder} into {weights.SHIPPED} (recipe {weights.recipe_hash(settings)})")
        return 0
    folder = weights.ensure(args.preset)
    print(f"[drift] model: {folder} (recipe {weights.recorded_recipe(folder)})")
    if args.pretrain_only:
        return 0
    from . import benchmark

    return benchmark.main(folder, args)


if __name__ == "__main__":
    sys.exit(main())
