"""One job, run inside a worker process: a workflow executed in-process on ComfyUI, or a Python function.

Every attempt writes into its own folder under the results' tmp/ and commits it with one rename (store.py); an
attempt that dies leaves nothing the summary reads. ComfyUI is booted once per worker process, in a base folder of
its own (models, input, temp), and each job gets its own output and LoRA folders inside its attempt folder.
"""

import copy
import datetime
import importlib
import json
import math
import os
import pathlib
import re
import shutil
import socket
import tempfile
import time

from .spec import DEFAULT_INTO, FOLDER, INTO, NAME, NODE, digest_bytes
from .store import Store

INPUT_SUBFOLDER = "sweep_inputs"  # subject folders are copied to <input>/sweep_inputs/<digest>/
METRICS_FORMAT = "driftless.metrics.v1"
COUNTER = re.compile(r"_\d{5}_$")  # the counter ComfyUI's get_save_image_path appends (name_00001_)


class JobError(RuntimeError):
    """A job that ran and failed: the message says which node and why."""


# ---------------------------------------------------------------- the workflow, with the job's values in it
def select_nodes(prompt: dict, selector: str) -> list[str]:
    """Node ids named by `selector`: a node id, else every node with that title, else every node of that class."""
    if selector in prompt:
        return [selector]
    for field in (lambda n: n.get("_meta", {}).get("title"), lambda n: n.get("class_type")):
        found = [i for i, node in prompt.items() if field(node) == selector]
        if found:
            return found
    raise JobError(f"no node {selector!r} in the workflow (a node id, a title or a class type); it has: "
                   + ", ".join(sorted({n.get("class_type", "?") for n in prompt.values()})))


def _split_target(target: str) -> tuple[str, str]:
    selector, _, name = target.rpartition(".")
    if not selector or not name:
        raise JobError(f"{target!r}: a target is NODE.input (NODE: a node id, a title or a class type)")
    return selector, name


def folder_pattern(digest: str) -> str:
    """What a subject folder becomes in the workflow: a pattern for Driftless Load Images, relative to the input."""
    return f"{INPUT_SUBFOLDER}/{digest[:16]}/*"


def apply_job(prompt: dict, record: dict, object_info: dict | None = None) -> dict:
    """The API-format prompt with the job's grid values set ([set] bindings) and its inserted nodes wired in.

    A table value with `node` becomes a node of that class (its other fields, except `name`, `into` and bound
    ones, are its inputs; '@NODE:i' links output i of NODE), wired into `into` (default the `regularizer` input of
    every Driftless Train LoRA); a link already there moves to the new node's `chain` input, so regularizers add.
    Required inputs the table leaves out take their defaults from `object_info` (the host's /object_info).
    """
    prompt = copy.deepcopy(prompt)
    axes, bindings = record["axes"], record["runner"].get("set", {})
    for source, targets in bindings.items():
        axis, _, field = source.partition(".")
        value = axes[axis] if not field else axes[axis].get("folder_sha256") if field == FOLDER else axes[axis][field]
        if field == FOLDER:
            value = folder_pattern(value)
        for target in targets:
            selector, name = _split_target(target)
            for node_id in select_nodes(prompt, selector):
                inputs = prompt[node_id].setdefault("inputs", {})
                if name not in inputs:
                    raise JobError(f"set.{source}: node #{node_id} ({prompt[node_id].get('class_type')}) has no input "
                                   f"{name!r}; it has {', '.join(sorted(inputs))}")
                inputs[name] = value
    for axis, value in axes.items():
        if isinstance(value, dict) and NODE in value:
            bound = {s.partition(".")[2] for s in bindings if s.partition(".")[0] == axis}
            info = (object_info or {}).get(value[NODE])
            if object_info is not None and info is None:
                raise JobError(f"grid.{axis}: node = {value[NODE]!r} is not a node type ComfyUI knows")
            inputs = {}
            for k, v in value.items():
                if k in (NAME, NODE, INTO, "folder_sha256") or k in bound:
                    continue
                inputs[k] = _link(prompt, v) if isinstance(v, str) and v.startswith("@") else v
            for name, spec in (info or {}).get("input", {}).get("required", {}).items():
                if name not in inputs and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                    inputs[name] = spec[1]["default"]
            selector, name = _split_target(value.get(INTO, DEFAULT_INTO))
            for node_id in select_nodes(prompt, selector):
                if node_id.startswith("sweep_"):
                    continue
                new_id = f"sweep_{axis}_{node_id}"  # one per target: each chains what its target had
                target_inputs = prompt[node_id].setdefault("inputs", {})
                chained = {"chain": target_inputs[name]} if isinstance(target_inputs.get(name), list) else {}
                prompt[new_id] = {"class_type": value[NODE], "inputs": {**inputs, **chained},
                                  "_meta": {"title": f"{value.get(NAME, value[NODE])} (sweep)"}}
                target_inputs[name] = [new_id, 0]
    return prompt


def _link(prompt: dict, text: str) -> list:
    selector, _, index = text[1:].rpartition(":")
    if not selector or not index.isdigit():
        raise JobError(f"{text!r}: a link is '@NODE:output index', e.g. '@DriftlessTinyModel:1'")
    found = select_nodes(prompt, selector)
    if len(found) != 1:
        raise JobError(f"{text!r}: {len(found)} nodes are called {selector!r}; name one by id")
    return [found[0], int(index)]


# ---------------------------------------------------------------- metrics a job produced
def collect_metrics(output: pathlib.Path) -> dict[str, float]:
    """Every metric report under `output` (driftless.metrics.v1), as 'REPORT.metric' -> mean; REPORT is the file's
    path under output without its counter, e.g. 'driftless_demo/metrics.clip_i'."""
    metrics = {}
    for path in sorted(output.rglob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(report, dict) or report.get("format") != METRICS_FORMAT:
            continue
        stem = COUNTER.sub("", path.relative_to(output).with_suffix("").as_posix())  # metrics_00001_ -> metrics
        for name, entry in report.get("metrics", {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
                metrics[f"{stem}.{name}"] = float(entry["mean"])
    return metrics


# ---------------------------------------------------------------- in the worker
_BOOTED = {}


def _remove_dead_workers_folders() -> None:
    """Base folders of workers that have exited (driftless-sweep-PID-*, PID no longer running) go."""
    for folder in pathlib.Path(tempfile.gettempdir()).glob("driftless-sweep-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # exists, another user's
            continue


def boot_worker(extra_model_paths: list[str]):
    """ComfyUI for this worker process, booted once in a base folder of its own (a GPU, where the task has one)."""
    from ..headless import host

    if "host" not in _BOOTED:
        _remove_dead_workers_folders()
        base = tempfile.mkdtemp(prefix=f"driftless-sweep-{os.getpid()}-")
        _BOOTED["host"] = host.boot(base)
        from utils.extra_config import load_extra_path_config

        for config in extra_model_paths:
            load_extra_path_config(str(config))
        _BOOTED["object_info"] = _BOOTED["host"].object_info()
    return _BOOTED["host"], _BOOTED["object_info"]


def torch_threads_from_ray() -> None:
    """Torch threads = the CPU slots Ray gave this task (a job function calls it first); outside a Ray worker,
    nothing changes."""
    try:
        import ray

        if not ray.is_initialized():
            return
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except (ImportError, AssertionError, RuntimeError):  # not in a Ray worker (a driver, or no Ray)
        return
    if cpus:
        import torch

        torch.set_num_threads(max(1, int(cpus)))


def _run_workflow(record: dict, tmp: pathlib.Path, workflow_path: str, folders: dict, extra_model_paths: list[str],
                  log) -> dict:
    from ..headless import runner, workflow

    _, object_info = boot_worker(extra_model_paths)
    import folder_paths

    path = pathlib.Path(workflow_path)
    data = workflow.load_workflow_file(path)
    if digest_bytes(path.read_bytes()) != record["runner"]["workflow_sha256"]:
        raise JobError(f"{path} changed after the sweep was expanded: run the sweep again")
    input_dir = pathlib.Path(folder_paths.get_input_directory())
    for digest, files in folders.items():
        target = input_dir / INPUT_SUBFOLDER / digest[:16]
        if not target.is_dir():
            if not isinstance(files, dict):  # an object reference, from the driver: the pictures' bytes by name
                import ray

                files = ray.get(files)
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for name, content in files.items():
                (partial / pathlib.Path(name).name).write_bytes(content)
            os.replace(partial, target)
    for message in runner.write_demo_assets(data):
        print(message, file=log, flush=True)
    prompt = apply_job(workflow.to_api_format(data, object_info, source=str(path)), record, object_info)
    (tmp / "prompt.json").write_text(json.dumps(prompt, indent=1) + "\n")
    output, loras = tmp / "output", tmp / "loras"
    output.mkdir()
    loras.mkdir()
    lora_paths = folder_paths.folder_names_and_paths["loras"][0]
    previous_output = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(output))
    lora_paths.insert(0, str(loras))
    try:
        output_nodes, problems = runner.validate(prompt, "sweep")
        if problems:
            raise JobError(f"{path.name} does not validate with this job's values:\n"
                           + runner.format_validation_errors(problems, prompt))
        result = runner.execute(prompt, output_nodes, stream=log)
    finally:
        lora_paths.remove(str(loras))
        folder_paths.set_output_directory(previous_output)
    if not result.success:
        err = result.error or {}
        raise JobError(f"node #{err.get('node_id')} {err.get('node_type')}: {err.get('exception_type')}: "
                       f"{err.get('exception_message')}" if err else "interrupted")
    return collect_metrics(output)


def _run_function(record: dict, tmp: pathlib.Path) -> dict:
    module, _, name = record["runner"]["function"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    returned = fn(record, tmp)
    if not isinstance(returned, dict):
        raise JobError(f"{record['runner']['function']} returned {type(returned).__name__}, not a dict of metrics")
    return {k: float(v) for k, v in returned.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_job(key: str, record: dict, label: str, results: str, workflow_path: str | None = None,
            folders: dict | None = None, extra_model_paths: list[str] | None = None) -> dict:
    """Run one job and commit its folder; returns its result. A job already committed is not run again."""
    store = Store(results)
    if store.is_done(key):
        return {**store.result(key), "skipped": True}
    previous = store.running().get(key, {})
    attempt = int(previous.get("attempt", 0)) + 1  # a marker left behind is an attempt that died
    info = {"key": key, "label": label, "host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt,
            "started": time.time()}
    tmp = store.begin(key, info)
    started, cpu0 = time.perf_counter(), time.process_time()
    try:
        (tmp / "job.json").write_text(json.dumps({"key": key, "label": label, "record": record}, indent=1) + "\n")
        with open(tmp / "log.txt", "w") as log:
            if "workflow" in record["runner"]:
                metrics = _run_workflow(record, tmp, workflow_path, folders or {}, extra_model_paths or [], log)
            else:
                metrics = _run_function(record, tmp)
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise JobError(f"non-finite metric(s): {', '.join(bad)}")
        result = {"key": key, "label": label, "axes": record["axes"], "metrics": metrics, "attempt": attempt,
                  "host": info["host"], "pid": info["pid"], "seconds": time.perf_counter() - started,
                  "cpu_seconds": time.process_time() - cpu0, "started_at": info["started"], "ended_at": time.time(),
                  "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "files": sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())}
        (tmp / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        committed = store.commit(key, tmp)
    except BaseException as e:
        store.abandon(key, tmp, f"{type(e).__name__}: {e}")
        raise
    return {**(result if committed else store.result(key)), "skipped": not committed}
