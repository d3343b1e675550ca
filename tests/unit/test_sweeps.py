"""Sweeps without Ray or ComfyUI: spec expansion and content keys, the workflow edits a job makes, the results
folder's commits, the summary's bootstrap intervals."""

import json
import math
import pathlib

import numpy as np
import pytest
from driftless.sweeps import jobs, spec, store, summary

WORKFLOW = {  # an API-format prompt, enough for the edits
    "1": {"class_type": "DriftlessTinyModel", "inputs": {"architecture": "sd15-tiny", "seed": 0}},
    "3": {"class_type": "DriftlessLoadImages", "inputs": {"files": "x/*.png", "size": 0}},
    "5": {"class_type": "DriftlessTrainLoRA", "inputs": {"model": ["1", 0], "steps": 30, "seed": 0},
          "_meta": {"title": "Train"}},
    "6": {"class_type": "DriftlessParameterAnchor", "inputs": {"weight": 0.5, "form": "paper"}},
    "7": {"class_type": "DriftlessTrainLoRA", "inputs": {"model": ["1", 0], "steps": 30, "seed": 0,
                                                         "regularizer": ["6", 0]}},
    "8": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 12}, "_meta": {"title": "Sample (base)"}},
    "9": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 12}},
}
SPEC = """
workflow = "wf.json"
[grid]
seed = [0, 1, 2]
[[grid.subject]]
name = "cat"
folder = "cat"
[[grid.method]]
name = "plain"
[[grid.method]]
name = "anchor"
node = "DriftlessDCO"
beta = 250.0
[set]
seed = ["DriftlessTrainLoRA.seed", "Sample (base).seed"]
"subject.folder" = "DriftlessLoadImages.files"
"""


def _write(folder: pathlib.Path, text: str = SPEC, name: str = "sweep.toml", image: bytes = b"\x89PNG one") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wf.json").write_text(json.dumps(WORKFLOW))
    (folder / "cat").mkdir(exist_ok=True)
    (folder / "cat" / "a.png").write_bytes(image)
    (folder / "cat" / "notes.txt").write_text("not an image: not in the key")
    (folder / name).write_text(text)
    return folder / name


def test_the_grid_expands_to_every_combination_with_stable_keys(tmp_path):
    sweep = spec.load_sweep(_write(tmp_path / "a"))
    assert len(sweep.jobs) == 3 * 1 * 2 and len({j.key for j in sweep.jobs}) == 6
    assert sweep.jobs[0].label == "seed=0 subject=cat method=plain"
    assert sweep.results == (tmp_path / "a" / "sweep-results").resolve()
    # the key is the SHA-256 of the canonical record, recomputed here by hand
    record = sweep.jobs[0].record
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    import hashlib

    assert sweep.jobs[0].key == hashlib.sha256(text.encode()).hexdigest()[:16]
    # another folder, the same files: the same keys (content, not paths)
    again = spec.load_sweep(_write(tmp_path / "elsewhere" / "b"))
    assert [j.key for j in again.jobs] == [j.key for j in sweep.jobs]


def test_json_spec_gives_the_same_jobs_as_toml(tmp_path):
    import tomllib

    as_json = json.dumps(tomllib.loads(SPEC))
    toml_keys = [j.key for j in spec.load_sweep(_write(tmp_path / "t")).jobs]
    assert [j.key for j in spec.load_sweep(_write(tmp_path / "j", as_json, "sweep.json")).jobs] == toml_keys


@pytest.mark.parametrize("change", ["workflow", "image", "knob", "binding"])
def test_what_a_job_is_made_of_changes_its_key(tmp_path, change):
    base = {j.label: j.key for j in spec.load_sweep(_write(tmp_path / "base")).jobs}
    path = _write(tmp_path / change, image=b"\x89PNG two" if change == "image" else b"\x89PNG one",
                  text=SPEC.replace("beta = 250.0", "beta = 500.0") if change == "knob"
                  else SPEC.replace('"Sample (base).seed"', '"9.seed"') if change == "binding" else SPEC)
    if change == "workflow":
        (path.parent / "wf.json").write_text(json.dumps({**WORKFLOW, "10": {"class_type": "X", "inputs": {}}}))
    changed = {j.label: j.key for j in spec.load_sweep(path).jobs}
    differ = {label for label in base if base[label] != changed[label]}
    expected = {label for label in base if "anchor" in label} if change == "knob" else set(base)
    assert differ == expected


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('"subject.folder" = "DriftlessLoadImages.files"', ""), "subject.folder is not used"),
    (lambda s: s.replace("[set]", "[set]\n\"colour\" = \"X.y\""), "there is no grid axis 'colour'"),
    (lambda s: s.replace("seed = [0, 1, 2]", "seed = []"), "grid.seed must be a non-empty list"),
    (lambda s: 'runner = "a:b"\n' + s, "exactly one of `workflow`"),
    (lambda s: s.replace('folder = "cat"', 'folder = "dog"'), "is not a folder"),
    (lambda s: s.replace("seed = [0, 1, 2]", "seed = [0, 0]"), "two grid points make the same job"),
    (lambda s: "retries = -1\n" + s, "retries must be an integer >= 0"),
    (lambda s: 'replicate = "seeds"\n' + s, "replicate = 'seeds' is not a grid axis"),
])
def test_spec_mistakes_are_named(tmp_path, edit, message):
    with pytest.raises(spec.SpecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        spec.load_sweep(_write(tmp_path, edit(SPEC)))


def test_a_job_sets_its_values_and_wires_its_regularizer(tmp_path):
    sweep = spec.load_sweep(_write(tmp_path))
    job = next(j for j in sweep.jobs if j.label == "seed=2 subject=cat method=anchor")
    info = {"DriftlessDCO": {"input": {"required": {"beta": ["FLOAT", {"default": 1000.0}],
                                                    "gamma": ["FLOAT", {"default": 1.0}], "mode": [["a", "b"], {}]}}}}
    prompt = jobs.apply_job(WORKFLOW, job.record, info)
    assert WORKFLOW["5"]["inputs"]["seed"] == 0  # the original is left as it was
    assert [prompt[i]["inputs"]["seed"] for i in ("5", "7", "8", "9")] == [2, 2, 2, 1]  # class, class, title; not #9
    digest = job.record["axes"]["subject"]["folder_sha256"]
    assert prompt["3"]["inputs"]["files"] == f"sweep_inputs/{digest[:16]}/*"
    new = prompt["sweep_method_5"]
    assert new["class_type"] == "DriftlessDCO"
    assert new["inputs"] == {"beta": 250.0, "gamma": 1.0}  # a knob given, a default filled, no default: left out
    assert prompt["5"]["inputs"]["regularizer"] == ["sweep_method_5", 0]
    # a regularizer already wired moves to the new node's chain: the two add (on that trainer only)
    assert prompt["7"]["inputs"]["regularizer"] == ["sweep_method_7", 0]
    assert prompt["sweep_method_7"]["inputs"] == {"beta": 250.0, "gamma": 1.0, "chain": ["6", 0]}
    plain = jobs.apply_job(WORKFLOW, next(j for j in sweep.jobs if "plain" in j.label).record)
    assert not any(k.startswith("sweep_") for k in plain) and plain["7"]["inputs"]["regularizer"] == ["6", 0]


def test_chain_and_links_and_bad_targets():
    record = {"runner": {"set": {}}, "axes": {"m": {"name": "pp", "node": "DriftlessPriorPreservation",
                                                    "clip": "@DriftlessTinyModel:1", "into": "7.regularizer"}}}
    prompt = jobs.apply_job(WORKFLOW, record)
    assert prompt["sweep_m_7"]["inputs"] == {"clip": ["1", 1], "chain": ["6", 0]}
    assert prompt["7"]["inputs"]["regularizer"] == ["sweep_m_7", 0] and "regularizer" not in prompt["5"]["inputs"]
    with pytest.raises(jobs.JobError, match="has no input 'stepz'"):
        jobs.apply_job(WORKFLOW, {"runner": {"set": {"s": ["Train.stepz"]}}, "axes": {"s": 3}})
    with pytest.raises(jobs.JobError, match="no node 'Nope'"):
        jobs.apply_job(WORKFLOW, {"runner": {"set": {"s": ["Nope.steps"]}}, "axes": {"s": 3}})
    with pytest.raises(jobs.JobError, match="not a node type ComfyUI knows"):
        jobs.apply_job(WORKFLOW, record, {})


def test_metrics_are_read_from_the_reports(tmp_path):
    out = tmp_path / "output" / "demo"
    out.mkdir(parents=True)
    report = {"format": "driftless.metrics.v1", "metrics": {"clip_i": {"mean": 0.5, "std": 0.1}, "dino": {"mean": 0.25}}}
    (out / "metrics_00001_.json").write_text(json.dumps(report))
    (out / "other.json").write_text(json.dumps({"format": "something else", "metrics": {"x": {"mean": 1}}}))
    assert jobs.collect_metrics(tmp_path / "output") == {"demo/metrics.clip_i": 0.5, "demo/metrics.dino": 0.25}


def test_a_job_is_committed_once(tmp_path):
    s = store.Store(tmp_path)
    first = s.begin("k1", {"attempt": 1})
    (first / "result.json").write_text("{}")
    assert s.running() == {"k1": {"attempt": 1}}
    second = s.begin("k1", {"attempt": 2})
    assert not first.exists()  # a dead attempt's leftovers go when the next one starts
    (second / "result.json").write_text('{"attempt": 2}')
    late = s.root / "tmp" / "k1.late"
    late.mkdir()
    (late / "result.json").write_text('{"attempt": 3}')
    assert s.commit("k1", second) is True
    assert s.commit("k1", late) is False and not late.exists()  # the job is there: the later attempt is dropped
    assert s.finished() == {"k1": {"attempt": 2}} and s.running() == {}
    t = s.begin("k2", {"attempt": 1})
    (t / "half.bin").write_bytes(b"x")
    s.abandon("k2", t, "ValueError: no")
    assert not t.exists() and s.running(live_only=True) == {} and s.running()["k2"]["ended"] == "ValueError: no"


def test_run_job_commits_and_skips_a_finished_job(tmp_path):
    record = {"runner": {"function": "driftless.sweeps.examples.toy:run_job"},
              "axes": {"seed": 3, "steps": 50, "method": {"name": "gd", "learning_rate": 0.5}}}
    first = jobs.run_job("abc", record, "seed=3", str(tmp_path))
    assert first["skipped"] is False and first["attempt"] == 1 and first["files"] == ["job.json", "log.txt", "weights.json"]
    assert abs(first["metrics"]["w"] - 3.0) < 0.1 and first["metrics"]["loss"] < 0.05  # y = 3x + noise(0.1)
    again = jobs.run_job("abc", record, "seed=3", str(tmp_path))
    assert again["skipped"] is True and again["metrics"] == first["metrics"]
    bad = {**record, "axes": {**record["axes"], "method": {"name": "x", "fail": True}}}
    with pytest.raises(ValueError, match="fails on purpose"):
        jobs.run_job("bad", bad, "bad", str(tmp_path))
    s = store.Store(tmp_path)
    assert list(s.finished()) == ["abc"] and list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(ValueError):
        jobs.run_job("bad", bad, "bad", str(tmp_path))
    assert s.running()["bad"]["attempt"] == 2  # the failed attempt's marker made the next one count on


def test_bootstrap_interval_matches_the_normal_interval_on_many_samples():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, size=400)
    low, high = summary.bootstrap_interval(values)
    half = 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert low < values.mean() < high
    assert abs(low - (values.mean() - half)) < 0.02 and abs(high - (values.mean() + half)) < 0.02
    assert summary.bootstrap_interval([1.0]) is None and summary.bootstrap_interval([2.0, 2.0]) == (2.0, 2.0)
    assert summary.bootstrap_interval(values) == (low, high)  # seeded


def test_summary_averages_over_the_replicate_axis():
    def result(seed, method, loss):
        return {"axes": {"seed": seed, "method": {"name": method}}, "metrics": {"loss": loss}, "seconds": 1.0}

    results = {"a": result(0, "x", 1.0), "b": result(1, "x", 3.0), "c": result(0, "y", 5.0)}
    rows = summary.summarize(results, order=["c", "a", "b"])
    loss = [(r["group"], r["n"], r["mean"]) for r in rows if r["metric"] == "loss"]
    assert loss == [("method=y", 1, 5.0), ("method=x", 2, 2.0)]
    x = next(r for r in rows if r["group"] == "method=x" and r["metric"] == "loss")
    assert 1.0 <= x["low"] <= x["high"] <= 3.0
    text = summary.markdown(rows, {"d": {"label": "seed=1 method=y", "error": "ValueError: no | yes", "attempts": 2}})
    assert "| method=y | loss | 1 | 5 | — (n < 2) |" in text and "| d | seed=1 method=y | 2 | ValueError: no \\| yes |" in text


def test_folders_of_exited_workers_are_removed(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setattr(jobs.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"driftless-sweep-{dead.stdout.strip()}-abc"
    alive = tmp_path / f"driftless-sweep-{os.getpid()}-def"
    for folder in (gone, alive):
        (folder / "models").mkdir(parents=True)
    jobs._remove_dead_workers_folders()
    assert not gone.exists() and alive.exists()


def test_a_sweep_in_process_runs_retries_records_failures_and_resumes(tmp_path):
    """run_sweep(in_process=True): the same store and job runner without Ray, one job after another here."""
    import io

    from driftless.sweeps import schedule

    path = tmp_path / "toy.toml"
    path.write_text('runner = "driftless.sweeps.examples.toy:run_job"\nretries = 1\n[grid]\nseed = [0, 1]\nsteps = [40]\n'
                    '[[grid.method]]\nname = "gd"\nlearning_rate = 0.5\n[[grid.method]]\nname = "bad"\nfail = true\n')
    sweep = spec.load_sweep(path, tmp_path / "results")
    log = io.StringIO()
    report = schedule.run_sweep(sweep, stream=log, in_process=True)
    good = {j.key for j in sweep.jobs if "gd" in j.label}
    bad = {j.key for j in sweep.jobs if "bad" in j.label}
    assert report["done"] == 2 and set(report["failed"]) == bad and report["skipped"] == 0
    s = store.Store(sweep.results)
    assert set(s.finished()) == good and all(r["pid"] == __import__("os").getpid() for r in s.finished().values())
    failures = s.failures()
    assert set(failures) == bad and all(f["attempts"] == 2 and "fails on purpose" in f["error"] for f in failures.values())
    assert "retrying" in log.getvalue() and "FAILED" in log.getvalue()
    assert "Failed jobs (2)" in (sweep.results / "summary.md").read_text()
    again = schedule.run_sweep(spec.load_sweep(path, tmp_path / "results"), stream=io.StringIO(), in_process=True)
    assert again["done"] == 0 and again["skipped"] == 2 and set(again["failed"]) == bad
