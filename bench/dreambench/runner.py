"""The whole run: inputs checked, every (regularizer, subject) run as one sweep job (subject.py, through the sweep
engine: in this process by default, on Ray with --workers or --address), then the aggregate table written to
OUT/dreambench.{md,json} from the subjects' result files.

What a rerun redoes is decided by the subjects' own files (subject.py: a complete subject is skipped, a half-done
one redoes what is missing); the sweep's folder OUT/sweep records each run's jobs, progress and failures and is
started afresh by every run.
"""

import dataclasses
import json
import pathlib
import shutil
import sys
import time

from . import protocol
from .dataset import DreamBenchError


@dataclasses.dataclass
class Options:
    dataset: pathlib.Path
    checkpoint: pathlib.Path
    clip: pathlib.Path
    dino: pathlib.Path
    out: pathlib.Path
    subjects: list[str] | None = None
    regularizers: list[str] = dataclasses.field(default_factory=lambda: ["plain"])
    guidance: list[str] = dataclasses.field(default_factory=lambda: ["cfg"])
    identifier: str = "sks"
    caption: str = "a photo of {0} {1}"
    resolution: int | None = None
    # training (TrainConfig; the Train LoRA node's defaults unless given)
    steps: int = 500
    rank: int = 16
    alpha: float | None = None
    learning_rate: float = 1e-4
    batch_size: int = 1
    training_dtype: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    class_images: int = 100
    # sampling
    sampler: str = "dpmpp_2m"
    scheduler: str = "normal"
    sample_steps: int = 50
    cfg: float = 7.5
    weak_strength: float = 0.3
    # protocol size (defaults: the standard protocol)
    prompts_limit: int | None = None
    images_per_prompt: int = protocol.IMAGES_PER_PROMPT

    def train_config(self):
        from ...trainers.config import TrainConfig

        return TrainConfig(steps=self.steps, rank=self.rank, alpha=self.alpha if self.alpha is not None else float(self.rank),
                           learning_rate=self.learning_rate, batch_size=self.batch_size, dtype=self.training_dtype,
                           gradient_checkpointing=self.gradient_checkpointing, seed=self.seed)

    def problems(self) -> list[str]:
        import comfy.samplers

        from .methods import GUIDANCE

        p = [f"training: {m}" for m in self.train_config().problems()]
        if self.sampler not in comfy.samplers.KSampler.SAMPLERS:
            p.append(f"--sampler {self.sampler!r} is not a ComfyUI sampler ({', '.join(comfy.samplers.KSampler.SAMPLERS[:8])}, ...)")
        if self.scheduler not in comfy.samplers.KSampler.SCHEDULERS:
            p.append(f"--scheduler {self.scheduler!r} is not a ComfyUI scheduler ({', '.join(comfy.samplers.KSampler.SCHEDULERS)})")
        bad = [g for g in self.guidance if g not in GUIDANCE]
        if bad or not self.guidance:
            p.append(f"--guidance {' '.join(bad)}: choose from {', '.join(GUIDANCE)}")
        if self.sample_steps < 1 or self.images_per_prompt < 1 or self.class_images < 1:
            p.append("--sample-steps, --images-per-prompt and --class-images must be >= 1")
        if self.prompts_limit is not None and self.prompts_limit < 1:
            p.append("--prompts-limit must be >= 1")
        if not 0.0 <= self.weak_strength <= 1.0:
            p.append(f"--weak-strength is a LoRA strength in [0, 1] (got {self.weak_strength})")
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 64):
            p.append(f"--resolution must be a multiple of 64, >= 64 (got {self.resolution})")
        if not self.identifier.strip() or " " in self.identifier.strip():
            p.append(f"--identifier must be one word (got {self.identifier!r})")
        try:
            self.caption.format(self.identifier, "dog")
            if "{0}" not in self.caption:
                p.append(f"--caption {self.caption!r} must contain {{0}} (the identifier); {{1}} is the class noun")
        except (IndexError, KeyError, ValueError):
            p.append(f"--caption {self.caption!r}: use {{0}} for the identifier and {{1}} for the class noun")
        return p


def check_backbone(folder: pathlib.Path, role: str) -> pathlib.Path:
    from ...metrics.backbones import MissingWeights, check_folder, expected_files, model_kind

    folder = pathlib.Path(folder).expanduser().resolve()
    want = "clip" if role == "clip" else "dino"
    if not folder.is_dir():
        raise DreamBenchError(f"--{role} folder {folder} does not exist: give a local copy of "
                              f"{'openai/clip-vit-base-patch32' if role == 'clip' else 'facebook/dino-vits16'} "
                              f"holding {expected_files(want)} (nothing is downloaded)")
    kind = model_kind(folder)
    if kind != want:
        what = f"a {kind} model" if kind else "no CLIP or DINO model (config.json missing or of another model_type)"
        extra = " (CLIP-T needs the full CLIPModel with its text tower and tokenizer)" if role == "clip" else ""
        raise DreamBenchError(f"--{role} {folder} holds {what}, not a {want} model{extra}")
    try:
        check_folder(folder, kind)
    except MissingWeights as e:
        raise DreamBenchError(f"--{role}: {e}") from None
    return folder


@dataclasses.dataclass
class Inputs:
    """The run's inputs, checked (nothing loaded): what the driver needs to make the jobs."""

    folder: pathlib.Path
    prompts: object
    subjects: list
    checkpoint: pathlib.Path
    clip: pathlib.Path
    dino: pathlib.Path
    method_parts: dict


def check_inputs(options: Options) -> Inputs:
    """Every input checked, nothing loaded or written: a DreamBenchError says what to fix."""
    from . import dataset, methods, model

    problems = options.problems()
    if problems:
        raise DreamBenchError("invalid options: " + "; ".join(problems))
    method_parts = {spec: methods.parse_method(spec) for spec in options.regularizers}
    folder = dataset.dataset_folder(options.dataset)
    prompts = dataset.load_prompts(folder)
    subjects = dataset.subjects(folder, prompts, options.subjects)
    checkpoint = model.check_checkpoint(options.checkpoint)
    return Inputs(folder, prompts, subjects, checkpoint, check_backbone(options.clip, "clip"),
                  check_backbone(options.dino, "dino"), method_parts)


class Bench:
    """What every subject run shares: the options, the loaded model and backbones, the sampler."""

    def __init__(self, options: Options, log=print):
        from . import model

        inputs = check_inputs(options)
        self.options, self.log = options, log
        self.method_parts = inputs.method_parts
        folder, self.prompts, self.subjects = inputs.folder, inputs.prompts, inputs.subjects
        self.checkpoint, clip_folder, dino_folder = inputs.checkpoint, inputs.clip, inputs.dino
        self.out = pathlib.Path(options.out).expanduser().resolve()
        self.train_config = options.train_config()

        from ...metrics.backbones import load_backbone
        from ...lora.fingerprint import model_fingerprint
        from .sampling import Sampler

        started = time.perf_counter()
        self.clip = load_backbone(clip_folder, kind="clip")
        self.dino = load_backbone(dino_folder, kind="dino")
        self.model, self.text_encoder, self.vae = model.load_checkpoint(self.checkpoint)
        self.resolution = options.resolution or model.default_resolution(self.model)
        self.checkpoint_identity = {"file": self.checkpoint.name,
                                    "unet_fingerprint": model_fingerprint(self.model.model.diffusion_model)}
        self.sampler = Sampler(self.model, self.text_encoder, self.vae, sampler=options.sampler,
                               scheduler=options.scheduler, steps=options.sample_steps, resolution=self.resolution)
        log(f"[dreambench] loaded {self.checkpoint.name}, CLIP {clip_folder.name}, DINO {dino_folder.name} in "
            f"{time.perf_counter() - started:.1f} s; {len(self.subjects)} subjects from {folder}, prompts from "
            f"{self.prompts.source}; resolution {self.resolution}")

    def backbones_on_device(self) -> None:
        """CLIP and DINO onto ComfyUI's text-encoder device through its memory manager, as the metrics nodes do."""
        from ...nodes.host import load_on_compute_device

        load_on_compute_device(self.clip.model)
        load_on_compute_device(self.dino.model)

    def progress(self, label: str, every_s: float = 10.0):
        last = [0.0]

        def on_step(step, total, loss, rate, _model=None):
            now = time.perf_counter()
            if now - last[0] >= every_s or step == total:
                last[0] = now
                eta = (total - step) / rate if rate > 0 else float("nan")
                self.log(f"[dreambench] {label}: step {step}/{total}  loss {loss:.4f}  {rate:.2f} it/s  ETA {eta:.0f} s")

        return on_step


# ------------------------------------------------------------------ the jobs
RUNNER = "driftless.bench.dreambench.runner:run_job"
SWEEP_FOLDER = "sweep"
_BENCHES: dict[str, Bench] = {}
_LOG = [print]  # where a job run in this process logs (run() sets it); a Ray worker prints


def options_record(options: Options) -> dict:
    """The options as JSON (paths as absolute strings): what a worker rebuilds them from."""
    out = {}
    for f in dataclasses.fields(options):
        v = getattr(options, f.name)
        out[f.name] = str(pathlib.Path(v).expanduser().resolve()) if isinstance(v, pathlib.Path) else v
    return json.loads(json.dumps(out))


def options_from_record(data: dict) -> Options:
    paths = {"dataset", "checkpoint", "clip", "dino", "out"}
    return Options(**{k: pathlib.Path(v) if k in paths and v is not None else v for k, v in data.items()})


def job_record(options: Options, subject, method: str, cpu: bool = False) -> dict:
    """One (subject, regularizer) job: the subject's photos by content, the method, and every option of the run
    (training, sampling with its guidance modes, protocol size, inputs)."""
    return {"runner": {"function": RUNNER},
            "axes": {"subject": subject.name, "regularizer": method, "seed": options.seed},
            "photos": subject.photo_digest(), "options": options_record(options), "cpu": cpu}


def run_job(record: dict, out_dir: pathlib.Path) -> dict:
    """The sweep runner: one subject under one regularizer (subject.SubjectRun, its files under OUT), the model and
    backbones loaded once per process; returns its scores per guidance ('cfg.dino', ...)."""
    from ...headless import host
    from ...sweeps.jobs import torch_threads_from_ray
    from ...sweeps.spec import canonical
    from .subject import SubjectRun

    options = options_from_record(record["options"])
    if "comfy.samplers" not in sys.modules:  # a fresh Ray worker: ComfyUI set up as the command sets it up
        host.configure_args(host.find_comfyui(), None, cpu=True if record.get("cpu") else None)
    torch_threads_from_ray()
    key = canonical(record["options"])
    if key not in _BENCHES:
        _BENCHES.clear()  # one loaded checkpoint per process
        _BENCHES[key] = Bench(options, log=lambda *a: _LOG[0](*a))
    bench = _BENCHES[key]
    subject = next((s for s in bench.subjects if s.name == record["axes"]["subject"]), None)
    if subject is None or subject.photo_digest() != record["photos"]:
        raise DreamBenchError(f"subject {record['axes']['subject']}: its photos in {options.dataset} are not the ones "
                              "the run was started with (changed, or another dataset on this node)")
    results = SubjectRun(bench, subject, record["axes"]["regularizer"]).run()
    return {f"{r['guidance']}.{k}": v for r in results for k, v in r["scores"].items()}


def run(options: Options, argv: list[str] | None = None, log=print, workers: int | None = None,
        address: str | None = None, cpu: bool = False) -> dict:
    """Every (regularizer, subject) as a sweep job: in this process when neither `workers` nor `address` is given
    (the model loaded once), else on a local Ray instance of `workers` CPU slots (one GPU per job where there are
    GPUs) or the cluster at `address`. Returns {"results": per-subject results, "rows": aggregate, "files": ...,
    "failed": {job label: error}}."""
    from ...sweeps.schedule import SweepBusy, run_sweep
    from ...sweeps.spec import Job, Sweep, content_key
    from ..common import write_results
    from . import report
    from .subject import RESULT_FILE

    started = time.perf_counter()
    inputs = check_inputs(options)
    if inputs.prompts.source.startswith("the copy"):
        log(f"[dreambench] {inputs.folder} has no {protocol.PROMPTS_FILE}: using {inputs.prompts.source}")
    out = pathlib.Path(options.out).expanduser().resolve()
    jobs = []
    for method in options.regularizers:
        for subject in inputs.subjects:
            record = job_record(options, subject, method, cpu)
            jobs.append(Job(key=content_key(record), record=record, label=f"{subject.name} / {method}"))
    ledger = out / SWEEP_FOLDER
    shutil.rmtree(ledger / "jobs", ignore_errors=True)  # the subjects' files decide what is redone, not the ledger
    shutil.rmtree(ledger / "failed", ignore_errors=True)
    sweep = Sweep(path=pathlib.Path("driftless bench dreambench"), results=ledger, retries=0 if address is None and
                  workers is None else 1, cpus_per_job=1, replicate="seed", axes=["subject", "regularizer", "seed"],
                  jobs=jobs, extra_model_paths=[], workflow=None)
    in_process = address is None and workers is None
    _LOG[0] = log
    stream = _LogStream(log)
    try:
        outcome = run_sweep(sweep, address=address, num_cpus=workers, stream=stream, in_process=in_process)
    except SweepBusy as e:
        raise DreamBenchError(str(e)) from None
    finally:
        _LOG[0] = print
        _BENCHES.clear()
    failed = {j.label: outcome["failed"][j.key] for j in jobs if j.key in outcome["failed"]}
    if not failed:
        shutil.rmtree(ledger, ignore_errors=True)  # nothing in it the subjects' files do not hold
    for error in failed.values():  # files made with other settings, weights missing: said as a run in one process says it
        for kind in ("DreamBenchError: ", "MissingWeights: "):
            if error.startswith(kind):
                raise DreamBenchError(error[len(kind):])
    results = []
    for method in options.regularizers:
        for subject in inputs.subjects:
            for guidance in options.guidance:
                path = out / method / subject.name / guidance / RESULT_FILE
                if f"{subject.name} / {method}" not in failed and path.is_file():
                    results.append(json.loads(path.read_text()))
    if not results:
        raise DreamBenchError(f"no subject finished; the errors are in {ledger / 'failed'}")
    rows = report.aggregate(results)
    text = report.table(rows)
    log(text)
    o = options
    where = "in one process" if in_process else f"on Ray, {address or f'{workers} local worker(s)'}"
    prompts_per_subject = min(o.prompts_limit or protocol.PROMPTS_PER_SUBJECT, protocol.PROMPTS_PER_SUBJECT)
    c = o.train_config()
    training = results[0]["settings"]["training"]
    notes = [
        (f"checkpoint: {inputs.checkpoint} (UNet fingerprint {training['checkpoint']['unet_fingerprint']}); "
         f"resolution {training['resolution']}"),
        (f"protocol: {len(inputs.subjects)} subjects ({sum(s.live for s in inputs.subjects)} live), {prompts_per_subject} "
         f"prompts each (prompts from {inputs.prompts.source}), {o.images_per_prompt} images per prompt; "
         f"identifier '{o.identifier}', caption '{o.caption}'"),
        (f"training: LoRA rank {c.rank}, alpha {c.alpha}, {c.targets} layers, lr {c.learning_rate}, {c.steps} steps, "
         f"batch {c.batch_size}, {c.optimizer}, {c.dtype}, seed {c.seed}; regularizers at their nodes' defaults"),
        (f"sampling: {o.sampler} / {o.scheduler}, {o.sample_steps} steps, cfg {o.cfg}"
         + (f"; personalization guidance weak strength s = {o.weak_strength}" if "personalization" in o.guidance else "")),
        (f"metrics: CLIP {inputs.clip}, DINO {inputs.dino}; raw cosines; DINO and CLIP-I are the mean over "
         "generated x reference pairs, CLIP-T uses each prompt with the identifier removed (class noun kept); "
         "references are the subject photos centre-cropped to a square at the training resolution; each subject's "
         "mean, then the mean over subjects"),
        (f"per-subject files: {out}/<regularizer>/<subject>/<guidance>/result.json; run took "
         f"{time.perf_counter() - started:.0f} s ({where}; "
         "completed subjects are skipped on a rerun)"),
    ]
    if failed:
        notes.append(f"MISSING: {len(failed)} job(s) failed and are not in these figures: "
                     + "; ".join(f"{k} ({' '.join(v.split())[:200]})" for k, v in failed.items()))
    markdown = text + "\n\nPer subject:\n\n" + report.subject_table(results)
    md, js = write_results("dreambench", rows, markdown, notes, folder=out, argv=argv,
                           extra={"subjects": [{k: r[k] for k in ("subject", "class", "kind", "regularizer", "guidance",
                                                                   "scores", "counts")} for r in results],
                                  "failed": failed})
    log(f"[dreambench] wrote {md} and {js}")
    return {"results": results, "rows": rows, "files": (md, js), "failed": failed}


class _LogStream:
    """The sweep's progress lines, into the run's log."""

    def __init__(self, log):
        self.log = log

    def write(self, text: str) -> None:
        if text.strip():
            self.log(text.rstrip("\n"))

    def flush(self) -> None:
        pass
