"""Fixtures shared by the unit tests of the benchmarks that run as sweeps (drift, forgetting)."""

import json

import pytest


@pytest.fixture
def fake_sweep_engine(monkeypatch):
    """`install(result_file, result_of, fails)`: sweeps.schedule.run_sweep replaced by one that commits each job as a
    worker commits it, with `result_of(axes)` written to `result_file`, except the jobs for which `fails(axes)` holds,
    recorded as failed. Returns the list its calls are appended to (address, num_cpus, in_process, and the sweep's
    cpus_per_job and retries)."""
    from driftless.sweeps import schedule, store

    def install(result_file: str, result_of, fails) -> list:
        calls = []

        def run_sweep(plan, address=None, num_cpus=None, in_process=False, **_):
            calls.append({"address": address, "num_cpus": num_cpus, "in_process": in_process,
                          "cpus_per_job": plan.cpus_per_job, "retries": plan.retries})
            s = store.Store(plan.results)
            failed = {}
            for job in plan.jobs:
                axes = job.record["axes"]
                if fails(axes):
                    failed[job.key] = "ValueError: on purpose"
                    s.record_failure(job.key, {"key": job.key, "label": job.label, "error": failed[job.key]})
                    continue
                tmp = s.begin(job.key, {"key": job.key})
                (tmp / result_file).write_text(json.dumps(result_of(axes)))
                (tmp / "result.json").write_text("{}")
                s.commit(job.key, tmp)
            return {"done": len(plan.jobs) - len(failed), "skipped": 0, "failed": failed, "seconds": 0.0}

        monkeypatch.setattr(schedule, "run_sweep", run_sweep)
        return calls

    return install
