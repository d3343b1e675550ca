"""`python -m driftless.sweeps SPEC`: run a sweep (behind `./driftless sweep`; docs/sweeps.md).

Exit codes: 0 every job done, 1 some job failed (the others ran; see failed/ and summary.md), 2 the spec is
invalid or another sweep holds the results folder, 130 interrupted (Ctrl+C; a rerun goes on where it stopped).
"""

import argparse
import logging
import pathlib
import sys

from .spec import SpecError, load_sweep
from .store import Store


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="driftless sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=pathlib.Path, help="the sweep spec: a TOML file (or JSON with the same keys)")
    parser.add_argument("--address", help="a running Ray cluster to use ('auto': the one `ray start` started on this "
                        "machine; or HEAD:6379); default: a new Ray instance on this machine")
    parser.add_argument("--results", type=pathlib.Path, help="the results folder (default: the spec's `results`, "
                        "else SPEC-results beside the spec); on a cluster it must be a folder every node sees")
    parser.add_argument("--num-cpus", type=int, help="CPU slots of the local Ray instance (default: every core)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs, their keys and which are done; run none")
    parser.add_argument("--verbose", action="store_true", help="show the workers' own output")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        sweep = load_sweep(args.spec, args.results)
    except SpecError as e:
        print(f"[sweep] error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        lines, done = Store(sweep.results).listing(sweep.jobs)
        print("\n".join(lines))
        print(f"[sweep] {len(sweep.jobs)} jobs, {done} done; results in {sweep.results}; nothing run (--dry-run)")
        return 0
    from .schedule import SweepBusy, run_sweep

    try:
        report = run_sweep(sweep, address=args.address, num_cpus=args.num_cpus, verbose=args.verbose)
    except SweepBusy as e:
        print(f"[sweep] error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[sweep] interrupted: finished jobs stay in {sweep.results}; run the same command to go on",
              file=sys.stderr)
        return 130
    print(f"[sweep] finished: {report['done']} run, {report['skipped']} already done, {len(report['failed'])} failed "
          f"in {report['seconds']:.1f} s")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
