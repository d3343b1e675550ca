"""Sweeps: a grid of jobs (subjects, methods and their knobs, guidance settings, seeds) run as Ray tasks.

`./driftless sweep SPEC` (docs/sweeps.md). On top of the pack like headless/ and bench/: nothing in the product
imports it. spec.py expands a spec into job records and their content keys, store.py keeps the results folder
(atomic commits), jobs.py runs one job inside a worker, schedule.py runs them on Ray, summary.py aggregates.
"""
