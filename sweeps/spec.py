"""Sweep specs: read a TOML (or JSON) file, expand its grid into job records, key each by its content.

A job record is plain JSON: the runner (a workflow file and where grid values go in it, or a Python function), and
one value per grid axis (`axes`). Its key is the SHA-256 of the record written canonically (sorted keys, no
whitespace), with every file it names replaced by the digest of its content: the same job in another checkout or on
another machine has the same key, and changing a workflow, an image or a knob makes a new one.
"""

import hashlib
import itertools
import json
import math
import pathlib
from dataclasses import dataclass, field

import tomllib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# keys of a table value with a meaning of their own (every other key is bound through [set] or is a node input)
NAME, NODE, INTO, FOLDER = "name", "node", "into", "folder"
DEFAULT_INTO = "DriftlessTrainLoRA.regularizer"
TOP_LEVEL = {"workflow", "runner", "results", "retries", "cpus_per_job", "replicate", "extra_model_paths", "grid", "set"}


class SpecError(ValueError):
    """A spec that cannot be run, with a message naming the file and the key."""


@dataclass
class Job:
    key: str  # 16 hex digits of the SHA-256 of `record`
    record: dict  # what the job is: JSON-ready, normalized
    label: str  # one line for people: axis=value ...
    folders: dict = field(default_factory=dict)  # digest -> absolute folder of images to copy into the input folder


@dataclass
class Sweep:
    path: pathlib.Path
    results: pathlib.Path
    retries: int
    cpus_per_job: int
    replicate: str  # the axis the summary averages over (its values are repeats, e.g. seeds)
    axes: list[str]
    jobs: list[Job]
    extra_model_paths: list[pathlib.Path]
    workflow: pathlib.Path | None  # the workflow file (None for a `runner` function)


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(record) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_key(record: dict) -> str:
    return digest_bytes(canonical(record).encode())[:16]


def folder_digest(folder: pathlib.Path) -> str:
    """SHA-256 over the folder's images (names and bytes, sorted by name): what a subject folder contributes to a key."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SpecError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this subject folder")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def read_spec(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a table (TOML) or an object (JSON)")
    return data


def load_sweep(path: str | pathlib.Path, results: str | pathlib.Path | None = None) -> Sweep:
    """The sweep a spec file describes, every job expanded and keyed; `results` overrides the spec's folder."""
    path = pathlib.Path(path).resolve()
    data = read_spec(path)
    here = path.parent
    where = str(path)
    unknown = set(data) - TOP_LEVEL
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a spec has {', '.join(sorted(TOP_LEVEL))}")
    if ("workflow" in data) == ("runner" in data):
        raise SpecError(f"{where}: give exactly one of `workflow` (a workflow file) or `runner` ('module:function')")
    grid = data.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise SpecError(f"{where}: [grid] is missing or empty: name at least one axis, e.g. seed = [0, 1, 2]")
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: grid.{axis} must be a non-empty list of values")
    retries = _int(data.get("retries", 1), "retries", where, 0)
    cpus = _int(data.get("cpus_per_job", 1), "cpus_per_job", where, 1)
    replicate = data.get("replicate", "seed")
    if "replicate" in data and replicate not in grid:
        raise SpecError(f"{where}: replicate = {replicate!r} is not a grid axis (axes: {', '.join(grid)})")
    bindings = _bindings(data.get("set", {}), grid, where) if "workflow" in data else {}
    if "runner" in data:
        if data.get("set"):
            raise SpecError(f"{where}: [set] binds grid values into a workflow; a `runner` gets the whole job record")
        runner_ref = data["runner"]
        if not isinstance(runner_ref, str) or runner_ref.count(":") != 1:
            raise SpecError(f"{where}: runner = 'package.module:function' (a function run_job(record, out_dir) -> dict)")
        base = {"runner": {"function": runner_ref}}
        workflow = None
    else:
        workflow = (here / data["workflow"]).resolve()
        if not workflow.is_file():
            raise SpecError(f"{where}: workflow {data['workflow']!r}: no such file ({workflow})")
        base = {"runner": {"workflow": workflow.name, "workflow_sha256": digest_bytes(workflow.read_bytes()),
                           "set": bindings}}
    extra = [(here / p).resolve() for p in data.get("extra_model_paths", [])]
    for p in extra:
        if not p.is_file():
            raise SpecError(f"{where}: extra_model_paths: {p} is not a file")

    axes = list(grid)
    folders: dict[str, pathlib.Path] = {}
    normalized = {axis: [_normalize(v, f"grid.{axis}[{i}]", here, folders, where) for i, v in enumerate(grid[axis])]
                  for axis, _ in grid.items()}
    if "workflow" in data:
        _check_fields_used(normalized, bindings, where)
    jobs, seen = [], {}
    for combo in itertools.product(*(normalized[a] for a in axes)):
        values = dict(zip(axes, combo))
        record = {**base, "axes": values}
        key = content_key(record)
        if key in seen:
            raise SpecError(f"{where}: two grid points make the same job ({seen[key]}); remove the repeated value")
        label = " ".join(f"{a}={value_label(v)}" for a, v in values.items())
        seen[key] = label
        used = {d: folders[d] for d in _folder_digests(values)}
        jobs.append(Job(key=key, record=record, label=label, folders=used))
    default_results = here / f"{path.stem}-results"
    results_dir = pathlib.Path(results) if results else (here / data["results"] if "results" in data else default_results)
    return Sweep(path=path, results=results_dir.resolve(), retries=retries, cpus_per_job=cpus, replicate=replicate,
                 axes=axes, jobs=jobs, extra_model_paths=extra, workflow=workflow)


def value_label(value) -> str:
    """A grid value in a few characters: a table's name, else its fields; a folder by its folder name."""
    if isinstance(value, dict):
        if NAME in value:
            return str(value[NAME])
        return ",".join(f"{k}:{value_label(v)}" for k, v in sorted(value.items()) if k != "folder_sha256")
    return json.dumps(value) if isinstance(value, str) and " " in value else str(value)


def _int(value, name, where, low) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SpecError(f"{where}: {name} must be an integer >= {low}, got {value!r}")
    return value


def _bindings(table, grid, where) -> dict[str, list[str]]:
    """[set]: 'axis' or 'axis.field' -> ['TARGET.input', ...] (TARGET a node id, title or class type)."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: [set] must be a table of 'axis' or 'axis.field' = 'NODE.input' (or a list of them)")
    out = {}
    for source, targets in table.items():
        targets = [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, list) or not all(isinstance(t, str) and "." in t for t in targets):
            raise SpecError(f"{where}: set.{source}: give 'NODE.input' or a list of them (NODE: id, title or class)")
        axis = source.split(".", 1)[0]
        if axis not in grid:
            raise SpecError(f"{where}: set.{source}: there is no grid axis {axis!r} (axes: {', '.join(grid)})")
        out[source] = list(targets)
    return out


def _normalize(value, where_value, here: pathlib.Path, folders: dict, where: str):
    """A grid value as it enters the record: tables sorted, a subject folder replaced by the digest of its images."""
    if isinstance(value, float) and math.isnan(value):
        raise SpecError(f"{where}: {where_value}: NaN is not a value")
    if isinstance(value, list):
        return [_normalize(v, f"{where_value}[{i}]", here, folders, where) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k == FOLDER:
            if not isinstance(v, str):
                raise SpecError(f"{where}: {where_value}.folder must be a path (relative to the spec)")
            folder = (here / v).resolve()
            if not folder.is_dir():
                raise SpecError(f"{where}: {where_value}.folder: {folder} is not a folder")
            d = folder_digest(folder)
            folders[d] = folder
            out["folder_sha256"] = d  # the content, not the path: the same pictures elsewhere are the same job
        else:
            out[k] = _normalize(v, f"{where_value}.{k}", here, folders, where)
    return dict(sorted(out.items()))


def _folder_digests(values: dict) -> list[str]:
    found = []
    for v in values.values():
        if isinstance(v, dict):
            if "folder_sha256" in v:
                found.append(v["folder_sha256"])
            found += _folder_digests({k: x for k, x in v.items() if k != "folder_sha256"})
    return found


def _check_fields_used(normalized: dict, bindings: dict, where: str) -> None:
    """Every field of every table value must reach the workflow (bound, or a node's input): a knob that does
    nothing would make jobs that differ only in name."""
    for axis, values in normalized.items():
        for value in values:
            if not isinstance(value, dict):
                if axis not in bindings:
                    raise SpecError(f"{where}: grid.{axis} is not used: bind it in [set] ({axis} = 'NODE.input')")
                continue
            for k in value:
                field_name = FOLDER if k == "folder_sha256" else k
                source = f"{axis}.{field_name}"
                if k in (NAME, NODE, INTO) or source in bindings or NODE in value:
                    continue
                raise SpecError(f"{where}: {source} is not used: bind it in [set] ('{source}' = 'NODE.input'), "
                                f"or give the table a `node` to insert")
            for source in bindings:
                axis_of, _, field_name = source.partition(".")
                if axis_of == axis and field_name and field_name not in value and not (
                        field_name == FOLDER and "folder_sha256" in value):
                    raise SpecError(f"{where}: set.{source}: the value {value_label(value)!r} of grid.{axis} has no "
                                    f"field {field_name!r}")
