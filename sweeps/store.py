"""The results folder of a sweep, keyed by job content key; a job's files appear whole or not at all.

    RESULTS/jobs/KEY/        a finished job: job.json (the record), result.json (metrics, time, attempt), log.txt,
                             output/ (samples, metric and drift reports), loras/ (LoRA files)
    RESULTS/failed/KEY.json  the error of a job's last failed run (removed when it later succeeds)
    RESULTS/running/KEY.json a job being run now: where (host, pid) and since when
    RESULTS/tmp/KEY.ID/      an attempt being written; never read; removed by the next attempt and at the end of a run
    RESULTS/summary.md|json  the aggregated table

An attempt writes everything under tmp/ and commits with one rename of its folder to jobs/KEY (atomic on one
filesystem). A rename onto a finished job fails, so a job retried after its first attempt committed (a worker killed
between the rename and the reply) is kept once: the later attempt's folder is dropped.
"""

import errno
import json
import os
import pathlib
import shutil
import uuid

from ..metrics.report import write_json_atomic


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)

    # the folders
    def job_dir(self, key: str) -> pathlib.Path:
        return self.root / "jobs" / key

    def failed_path(self, key: str) -> pathlib.Path:
        return self.root / "failed" / f"{key}.json"

    def running_path(self, key: str) -> pathlib.Path:
        return self.root / "running" / f"{key}.json"

    def create(self) -> None:
        for sub in ("jobs", "failed", "running", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # reading
    def is_done(self, key: str) -> bool:
        return (self.job_dir(key) / "result.json").is_file()

    def listing(self, jobs) -> tuple[list[str], int]:
        """(one line per job: key, done or to run, label; how many are done): what a dry run shows."""
        done = [self.is_done(j.key) for j in jobs]
        return [f"{j.key}  {'done   ' if d else 'to run '}  {j.label}" for j, d in zip(jobs, done)], sum(done)

    def result(self, key: str) -> dict | None:
        path = self.job_dir(key) / "result.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def finished(self) -> dict[str, dict]:
        """key -> result of every committed job (one entry per key: a folder name cannot repeat)."""
        jobs = self.root / "jobs"
        found = {}
        for d in sorted(jobs.iterdir()) if jobs.is_dir() else []:
            if (d / "result.json").is_file():
                found[d.name] = json.loads((d / "result.json").read_text())
        return found

    def running(self, live_only: bool = False) -> dict[str, dict]:
        """key -> marker of attempts begun and not committed (`live_only`: not ended by an error either)."""
        found = {}
        folder = self.root / "running"
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                info = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):  # removed or replaced while read
                continue
            if not (live_only and "ended" in info):
                found[p.stem] = info
        return found

    def failures(self) -> dict[str, dict]:
        folder = self.root / "failed"
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}

    # writing, from a worker
    def begin(self, key: str, info: dict) -> pathlib.Path:
        """A fresh attempt folder for `key` (earlier attempts' leftovers removed) and the running marker."""
        self.create()
        for stale in (self.root / "tmp").glob(f"{key}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        write_json_atomic(info, self.running_path(key))
        return tmp

    def commit(self, key: str, tmp: pathlib.Path) -> bool:
        """Rename the attempt's folder to jobs/KEY. False (and the folder dropped) when the job is already there."""
        final = self.job_dir(key)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        finally:
            self.running_path(key).unlink(missing_ok=True)
        self.failed_path(key).unlink(missing_ok=True)
        return True

    def abandon(self, key: str, tmp: pathlib.Path, error: str) -> None:
        """An attempt that raised: its folder goes; its marker stays, marked ended, so the next attempt counts on."""
        shutil.rmtree(tmp, ignore_errors=True)
        marker = self.running_path(key)
        info = json.loads(marker.read_text()) if marker.is_file() else {"key": key}
        write_json_atomic({**info, "ended": error}, marker)

    # writing, from the driver
    def record_failure(self, key: str, report: dict) -> None:
        write_json_atomic(report, self.failed_path(key))
        self.running_path(key).unlink(missing_ok=True)

    def clean(self) -> None:
        """Drop what no live attempt owns: attempt folders and running markers (call when no job runs)."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        for p in (self.root / "running").glob("*.json"):
            p.unlink(missing_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
