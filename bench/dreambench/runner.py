"""The whole run: inputs checked, the checkpoint and metric backbones loaded once, every (regularizer, subject)
run (subject.py), then the aggregate table written to OUT/dreambench.{md,json}."""

import dataclasses
import pathlib
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


class Bench:
    """What every subject run shares: the options, the loaded model and backbones, the sampler."""

    def __init__(self, options: Options, log=print):
        from . import dataset, methods, model

        problems = options.problems()
        if problems:
            raise DreamBenchError("invalid options: " + "; ".join(problems))
        self.options, self.log = options, log
        self.method_parts = {spec: methods.parse_method(spec) for spec in options.regularizers}
        folder = dataset.dataset_folder(options.dataset)
        self.prompts = dataset.load_prompts(folder)
        if self.prompts.source.startswith("the copy"):
            log(f"[dreambench] {folder} has no {protocol.PROMPTS_FILE}: using {self.prompts.source}")
        self.subjects = dataset.subjects(folder, self.prompts, options.subjects)
        self.checkpoint = model.check_checkpoint(options.checkpoint)
        clip_folder, dino_folder = check_backbone(options.clip, "clip"), check_backbone(options.dino, "dino")
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


def run(options: Options, argv: list[str] | None = None, log=print) -> dict:
    """Every (regularizer, subject); returns {"results": per-subject results, "rows": aggregate, "files": ...}."""
    from ..common import write_results
    from . import report
    from .subject import SubjectRun

    started = time.perf_counter()
    bench = Bench(options, log)
    results = []
    total = len(options.regularizers) * len(bench.subjects)
    for i, method in enumerate(options.regularizers):
        for j, subject in enumerate(bench.subjects):
            n = i * len(bench.subjects) + j + 1
            log(f"[dreambench] --- {n}/{total}: {subject.name} / {method} ---")
            results += SubjectRun(bench, subject, method).run()
    rows = report.aggregate(results)
    text = report.table(rows)
    log(text)
    o = options
    prompts_per_subject = min(o.prompts_limit or protocol.PROMPTS_PER_SUBJECT, protocol.PROMPTS_PER_SUBJECT)
    c = bench.train_config
    notes = [
        (f"checkpoint: {bench.checkpoint} (UNet fingerprint {bench.checkpoint_identity['unet_fingerprint']}); "
         f"resolution {bench.resolution}"),
        (f"protocol: {len(bench.subjects)} subjects ({sum(s.live for s in bench.subjects)} live), {prompts_per_subject} "
         f"prompts each (prompts from {bench.prompts.source}), {o.images_per_prompt} images per prompt; "
         f"identifier '{o.identifier}', caption '{o.caption}'"),
        (f"training: LoRA rank {c.rank}, alpha {c.alpha}, {c.targets} layers, lr {c.learning_rate}, {c.steps} steps, "
         f"batch {c.batch_size}, {c.optimizer}, {c.dtype}, seed {c.seed}; regularizers at their nodes' defaults"),
        (f"sampling: {o.sampler} / {o.scheduler}, {o.sample_steps} steps, cfg {o.cfg}"
         + (f"; personalization guidance weak strength s = {o.weak_strength}" if "personalization" in o.guidance else "")),
        (f"metrics: CLIP {bench.clip.folder}, DINO {bench.dino.folder}; raw cosines; DINO and CLIP-I are the mean over "
         "generated x reference pairs, CLIP-T uses each prompt with the identifier removed (class noun kept); "
         "references are the subject photos centre-cropped to a square at the training resolution; each subject's "
         "mean, then the mean over subjects"),
        (f"per-subject files: {bench.out}/<regularizer>/<subject>/<guidance>/result.json; run took "
         f"{time.perf_counter() - started:.0f} s (completed subjects are skipped on a rerun)"),
    ]
    markdown = text + "\n\nPer subject:\n\n" + report.subject_table(results)
    md, js = write_results("dreambench", rows, markdown, notes, folder=bench.out, argv=argv,
                           extra={"subjects": [{k: r[k] for k in ("subject", "class", "kind", "regularizer", "guidance",
                                                                   "scores", "counts")} for r in results]})
    log(f"[dreambench] wrote {md} and {js}")
    return {"results": results, "rows": rows, "files": (md, js)}
