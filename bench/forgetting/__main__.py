"""`./driftless bench forgetting [--quick]`: continual personalization on the shapes model, forgetting per method.

Learns sequences of the drift benchmark's subjects one after another with sequential LoRA, LoRA-EWC, EWC-DC and
EWC-DC + DSC (Jha et al., ICLR 2025) at the nodes' defaults, scores every stage, and writes
bench/results/forgetting.{md,json} (--quick: forgetting_quick) with bootstrap 95% intervals over
(sequence, seed) units; the default run (no --quick, no subset chosen) also rewrites the DC-score rows of
docs/claims.md.

Every (sequence, method, seed) job runs as a sweep job (docs/sweeps.md): one after another in this process by
default, --workers N for N at once on a local Ray instance, --address for a Ray cluster. Finished jobs are kept in
the results folder by a key of the job, the model's recipe, the settings and the code: a rerun (after Ctrl+C, a
failure or a crash) runs only what is missing, then writes the tables from every job.
"""

import argparse
import os
import sys

from ..common import add_sweep_options, positive_int, start


def main() -> int:
    parser = argparse.ArgumentParser(prog="driftless bench forgetting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="pairs instead of triples, 50 steps per concept (forgetting_quick.*); default: three "
                        "sequences of three subjects x 3 seeds x 4 methods, 100 steps per concept")
    parser.add_argument("--sequences", nargs="+", metavar="A,B[,C]",
                        help="subject sequences, comma-separated, learned left to right (--list shows the subjects)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help="training seeds (default 0 1 2)")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="of 'sequential LoRA', 'LoRA-EWC', 'EWC-DC', 'EWC-DC + DSC' (default: all four)")
    parser.add_argument("--steps", type=positive_int, help="training steps per concept (default: the mode's)")
    parser.add_argument("--threads", type=positive_int,
                        help="torch threads (and Ray CPU slots) per job (default 1, as the recorded runs used)")
    add_sweep_options(parser, "forgetting", "jobs at once on this machine, each in its own worker of a local Ray "
                      "instance (default: none, the jobs run one after another in this process, the model loaded once; "
                      "2 runs two at once on two idle cores)")
    parser.add_argument("--name", help="results file name under bench/results (default: forgetting or forgetting_quick)")
    parser.add_argument("--list", action="store_true", help="list the subjects, methods and default sequences, and stop")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    start(args.threads)
    from . import benchmark, stats

    if args.list:
        from ..drift import grid

        print("\n".join(s.describe() for s in grid.SUBJECTS.values()))
        print("methods:", ", ".join(stats.METHODS))
        print("sequences:", "; ".join(",".join(s) for s in benchmark.SEQUENCES))
        return 0
    from ...shapes import weights

    return benchmark.main(weights.ensure(weights.SHIPPED_PRESET), args)


if __name__ == "__main__":
    sys.exit(main())
