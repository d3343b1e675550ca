"""Continual personalization on the shapes model: does the DC-score method forget less?

Jha et al., "Mining your own secrets" (ICLR 2025) claim that EWC with a diffusion-classifier Fisher (EWC-DC), and
with diffusion-score consolidation (DSC) on top, forgets earlier concepts less than sequential LoRA and LoRA-EWC.
A job is (concept sequence, method, seed): two or three subjects of the drift benchmark (bench/drift/grid.py
SUBJECTS) are learned one after another, each captioned "a <trigger> on a white background" with its own trigger,
through the pack's own continual code path, as the nodes run it: Continual Regularizer on the pool -> Train LoRA
(trainers.loop.train_lora) -> [with DSC, from the second concept on: Continual Regularizer with distill on and the
LoRA just trained as the teacher -> Train LoRA again] -> Add Concept (the Fisher pass). Every knob of the
regularizer, of Add Concept and of the Retention Report is at its node default (DEFAULTS below, checked against
the nodes by the tests); c_0 is the class prompt "a shape on a white background" (the pool's pretrained-prompt
input, which the node leaves to the user).

After the last concept each stage's snapshot in the pool is scored:
- subject fidelity of every concept learned by then: classifier-feature cosine of samples of its own prompt
  (6 seeds, the drift benchmark's sampler and cfg) against its training pictures (bench/drift/benchmark.score's
  measure);
- DC accuracy of every concept learned by then: the Retention Report (trainers/continual/retention.py, every
  stage) on 4 held-out pictures per concept, never trained on;
- at the last stage the prior's drift: pixel RMSE of the drift benchmark's prior prompts against the base model's
  samples at the same seeds.
Forgetting and the averages are computed from these stage x concept matrices in stats.py.
"""

import dataclasses
import time
from functools import partial

import torch

from ...shapes import dataset, metrics
from ..drift import benchmark as drift
from ..drift import grid
from . import stats

TRIGGERS = ("sks", "zwx", "qlv", "bnj")  # one per concept, in the order learned
PRETRAINED_PROMPT = drift.CLASS_PROMPT  # c_0: the class, without a trigger
TRAIN_PICTURES, HELD_OUT_PICTURES = 4, 4
# node defaults (nodes/continual.py): Concept Pool, Add Concept, Retention Report; the regularizer's are its config's
DEFAULTS = {"score_temperature": 1.0, "fisher_draws": 50, "fisher_decay": 0.9, "report_draws": 8, "report_seed": 0,
            "fisher_seed": 0}
SEQUENCES = (("orange-cross", "cyan-square", "magenta-triangle-dots"),
             ("purple-cross-stripes", "orange-circle-stripes", "teal-cross-dots"),
             ("cyan-square", "teal-cross-dots", "orange-cross"))
MODES = {
    # every method on three sequences of three concepts, three seeds; 100 steps per concept (the drift benchmark's
    # quick training length, where plain LoRA has learned its subject)
    "full": {"sequences": SEQUENCES, "seeds": (0, 1, 2), "knobs": {"steps": 100, "rank": 8, "learning_rate": 1e-3}},
    # the same sequences cut to their first two concepts, two seeds, 50 steps per concept
    "quick": {"sequences": tuple(s[:2] for s in SEQUENCES), "seeds": (0, 1),
              "knobs": {"steps": 50, "rank": 8, "learning_rate": 1e-3}},
}


def concept_caption(trigger: str, background: str = "white") -> str:
    """shapes.dataset.subject_caption's template with the concept's own trigger."""
    return dataset.subject_caption(background).replace(dataset.TRIGGER, trigger, 1)


@dataclasses.dataclass(frozen=True)
class Job:
    sequence: tuple
    method: str
    seed: int
    knobs: tuple = ()

    @property
    def knob(self) -> dict:
        return dict(self.knobs)

    def record(self) -> dict:
        return {"sequence": list(self.sequence), "method": self.method, "seed": self.seed, "knobs": self.knob}

    @property
    def key(self) -> str:
        from ...sweeps.spec import content_key

        return content_key(self.record())


def expand(sequences, methods, seeds, knobs: dict) -> list[Job]:
    for sequence in sequences:
        unknown = [s for s in sequence if s not in grid.SUBJECTS]
        if unknown:
            raise SystemExit(f"unknown subject {unknown[0]!r}: choose from {sorted(grid.SUBJECTS)}")
        if not 2 <= len(sequence) <= len(TRIGGERS) or len(set(sequence)) != len(sequence):
            raise SystemExit(f"sequence {sequence}: give 2 to {len(TRIGGERS)} different subjects")
    for m in methods:
        if m not in stats.METHODS:
            raise SystemExit(f"unknown method {m!r}: choose from {list(stats.METHODS)}")
    return [Job(tuple(seq), m, int(seed), tuple(sorted(knobs.items()))) for seq in sequences for seed in seeds for m in methods]


def _regularizer(pool, encode, **overrides):
    from ...trainers.regularizers.continual import Continual

    return Continual(pool, [encode(c.prompt) for c in pool.concepts], encode(pool.pretrained_prompt), **overrides)


def learn(pool, model, data, encode, config, trigger: str, caption: str, dsc: bool):
    """One concept, as the nodes run it: train against the pool (and consolidate with DSC when asked and the pool
    is not empty), then Add Concept. Returns (the grown pool, the LoRA trained before any DSC)."""
    from ...lora.files import LoraWeights, lora_metadata
    from ...trainers.continual.learn import add_concept
    from ...trainers.loop import train_lora
    from ...trainers.model_state import outside_inference_mode

    def train(regularizer):
        result = train_lora(model, data, config, [regularizer])
        lora = result.adapter.lora_state_dict()
        meta = lora_metadata(config, result.base_fingerprint, result.steps_done, data.captions, [regularizer])
        return LoraWeights({k: v.detach().clone() for k, v in lora.items()}, meta)

    trained = lora = train(_regularizer(pool, encode))
    if dsc and pool.concepts:
        lora = train(_regularizer(pool, encode, distill=True, teacher=trained))
    grown = outside_inference_mode(add_concept)(
        pool, model, lora, data, encode, trigger=trigger, prompt=caption, draws=DEFAULTS["fisher_draws"],
        decay=DEFAULTS["fisher_decay"], k=_config_default("concepts_per_score"), seed=DEFAULTS["fisher_seed"],
        metadata=lora.metadata)
    return grown, trained


def _config_default(name: str):
    from ...trainers.regularizers.continual import ContinualConfig

    return getattr(ContinualConfig(), name)


def _pictures(name: str):
    subject = grid.SUBJECTS[name]
    return subject.render(TRAIN_PICTURES, seed=7), subject.render(HELD_OUT_PICTURES, seed=11)


def run_job(job: Job, folder) -> dict:
    """Learn the job's sequence with its method, then score every stage's snapshot (module docstring)."""
    from ...guidance.guider import make_guider
    from ...lora.fingerprint import patcher_fingerprint
    from ...trainers.config import TrainConfig
    from ...trainers.continual.pool import ConceptPool
    from ...trainers.continual.retention import evaluate
    from ...trainers.data import TrainingData
    from ...trainers.model_state import outside_inference_mode

    t0, c0 = time.perf_counter(), time.process_time()
    k = job.knob
    ctx = drift._context(folder)
    model, sampler, net, vae = ctx["model"], ctx["sampler"], ctx["net"], ctx["vae"]
    encode = sampler.cond
    method = "EWC-DC" if job.method == "EWC-DC + DSC" else job.method
    pool = ConceptPool(patcher_fingerprint(model), method, PRETRAINED_PROMPT, DEFAULTS["score_temperature"])
    config = TrainConfig(steps=k["steps"], rank=k["rank"], alpha=k["rank"], learning_rate=k["learning_rate"],
                         targets="attention", null_prompt_dropout=0.1, seed=job.seed)
    triggers = TRIGGERS[:len(job.sequence)]
    captions = [concept_caption(t) for t in triggers]
    pictures, held_out = [], []
    for i, (name, trigger, caption) in enumerate(zip(job.sequence, triggers, captions)):
        train_images, held = _pictures(name)
        pictures.append(train_images)
        with torch.inference_mode():
            latents, held_latents = vae.encode(train_images), vae.encode(held)
        held_out.append(held_latents)
        data = TrainingData(latents.clone(), [encode(caption)] * TRAIN_PICTURES, sampler.null, [caption] * TRAIN_PICTURES)
        pool, _ = learn(pool, model, data, encode, config, trigger, caption, dsc=job.method == "EWC-DC + DSC")
    train_s = time.perf_counter() - t0

    # every stage's snapshot: each learned concept's prompt sampled (its fidelity), the prior prompts at the last
    feats = lambda x: net.features(x).detach()
    prior_prompts = [(dataset.caption(*p), list(range(100, 100 + drift.PRIOR_SEEDS))) for p in drift.PRIOR]
    seeds = list(range(200, 200 + drift.SUBJECT_SEEDS))
    fidelity, prior_rmse = [], None
    for s, concept in enumerate(pool.concepts):
        sets = [(captions[j], seeds) for j in range(s + 1)]
        if s == len(pool) - 1:
            sets += prior_prompts
        images = drift.sample_sets(sampler, partial(make_guider, model, lora=dict(concept.lora), cfg=drift.CFG, mode="cfg"), sets)
        with torch.no_grad():
            fidelity.append([metrics.subject_fidelity(feats(images[captions[j]]), feats(pictures[j])) for j in range(s + 1)])
        if s == len(pool) - 1:
            got = torch.cat([images[p] for p, _ in prior_prompts])
            prior_rmse = metrics.paired_rmse(got, torch.cat([ctx["base"][p] for p, _ in prior_prompts]))
    base_images = drift.sample_sets(sampler, partial(drift.base_guider, model), [(c, seeds) for c in captions])
    with torch.no_grad():
        base_fidelity = [metrics.subject_fidelity(feats(base_images[c]), feats(p)) for c, p in zip(captions, pictures)]

    labels = [j for j in range(len(pool)) for _ in range(HELD_OUT_PICTURES)]
    report = outside_inference_mode(evaluate)(pool, model, encode, torch.cat(held_out), labels,
                                              draws=DEFAULTS["report_draws"], seed=DEFAULTS["report_seed"], all_stages=True)
    dc_accuracy = [[report["concepts"][j]["accuracy"][triggers[s]] for j in range(s + 1)] for s in range(len(pool))]
    snapshots = [_tensors(c.lora) for c in pool.concepts]  # the LoRA after each stage, as scored
    changed = [float(max((a - b).abs().max() for a, b in zip(snapshots[i], snapshots[i - 1])))
               for i in range(1, len(snapshots))]
    return {"key": job.key, "job": job.record(), "triggers": list(triggers), "captions": captions,
            "fidelity": fidelity, "dc_accuracy": dc_accuracy, "base_fidelity": base_fidelity,
            "base_dc_accuracy": [report["concepts"][j]["accuracy"].get("base") for j in range(len(pool))],
            "prior_rmse_to_base": prior_rmse, "pool_concepts": pool.triggers,
            "lora_change_between_stages": changed, "train_s": train_s,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def _tensors(lora: dict) -> list:
    return [lora[k] for k in sorted(lora)]


# --- the run ---------------------------------------------------------------------------------------------------

FIGURE_NAMES = {"fidelity_forgetting": "forgetting, fidelity ↓", "dc_accuracy_forgetting": "forgetting, DC accuracy ↓",
                "fidelity_learned": "fidelity when learned ↑", "fidelity_final": "fidelity at the end ↑",
                "dc_accuracy_learned": "DC accuracy when learned ↑", "dc_accuracy_final": "DC accuracy at the end ↑",
                "prior_rmse_to_base": "prior pixel RMSE to base ↓"}


def summary_table(summary: dict) -> str:
    cell = lambda v, sign="": f"{v[0]:{sign}.3f} ({v[1]:{sign}.3f} to {v[2]:{sign}.3f})"
    keys = list(FIGURE_NAMES)
    lines = ["| method | n | " + " | ".join(FIGURE_NAMES[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for method, row in summary["methods"].items():
        lines.append(f"| {method} | {row['n']} | " + " | ".join(cell(row[k]) for k in keys) + " |")
    lines += ["", ("Paired differences (same sequence and seed; < 0 on forgetting and RMSE, > 0 on fidelity and accuracy: "
              "better than the baseline):"), "",
              "| comparison | n | " + " | ".join(FIGURE_NAMES[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, row in summary["deltas"].items():
        lines.append(f"| {name} | {row['n']} | " + " | ".join(cell(row[k], "+") for k in keys) + " |")
    return "\n".join(lines)


def _shown(folder) -> str:
    """The weights folder relative to the repository when it is in it (shapes/weights/), else as it is."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        return f"{pathlib.Path(folder).resolve().relative_to(root)}/"
    except ValueError:
        return str(folder)


def jobs_for(args) -> list[Job]:
    mode = MODES["quick" if args.quick else "full"]
    knobs = dict(mode["knobs"])
    if args.steps:
        knobs["steps"] = args.steps
    sequences = [tuple(s.split(",")) for s in args.sequences] if args.sequences else mode["sequences"]
    return expand(sequences, args.methods or stats.METHODS, args.seeds or mode["seeds"], knobs)


def main(folder, args, tables=None) -> int:
    """Run the jobs not yet in the results folder as a sweep (sweep.py: in this process by default, on Ray with
    --workers or --address), then build the tables from every job's forgetting.json into `tables` (default
    bench/results). Returns the exit code: 0 every job done, 1 some failed (the tables cover the others and name the
    missing ones)."""
    from ..common import RESULTS, write_results
    from ..drift import claims
    from ..drift import sweep as drift_sweep
    from . import sweep

    tables = tables or RESULTS
    jobs = jobs_for(args)
    name = args.name or ("forgetting_quick" if args.quick else "forgetting")
    recipe = drift_sweep.recipe_of(folder)
    threads = args.threads or 1
    plan = sweep.make_sweep(jobs, recipe, args.results or drift_sweep.default_results(name, "forgetting"),
                            cpus_per_job=threads, retries=0 if args.address is None and args.workers is None else 1)
    print(f"[forgetting] {len(jobs)} jobs: {len({j.sequence for j in jobs})} sequences x {len({j.method for j in jobs})} "
          f"methods x {len({j.seed for j in jobs})} seeds, knobs {jobs[0].knob}; model {_shown(folder)} (recipe {recipe}); "
          f"results in {plan.results}", flush=True)
    ran = drift_sweep.run(plan, "forgetting", sweep.RESULT_FILE, address=args.address, workers=args.workers,
                          threads=threads, dry_run=args.dry_run)
    if ran is None:
        return 0
    report, wall, results, missing = ran
    cpu = sum(r["cpu_s"] for r in results)
    summary = stats.summarise(results)
    text = summary_table(summary)
    print(text)
    k = jobs[0].knob
    notes = [
        drift_sweep.run_note(plan, report, wall, cpu, threads, args.load, args.address, args.workers),
        f"model: the shapes model in {_shown(folder)} (recipe {recipe}); its classifier's features score fidelity",
        "sequences (learned left to right, triggers " + ", ".join(TRIGGERS) + " in that order, captioned "
        f"'{concept_caption('<trigger>')}'): " + "; ".join(" > ".join(s) for s in dict.fromkeys(j.sequence for j in jobs))
        + f"; seeds {sorted({j.seed for j in jobs})}",
        (f"training per concept: LoRA rank {k['rank']} on attention, lr {k['learning_rate']}, {k['steps']} steps, batch 1, "
        f"AdamW, 10% empty captions, {TRAIN_PICTURES} pictures; EWC-DC + DSC runs a second {k['steps']}-step training "
        "(the consolidation) from the second concept on"),
        (f"continual knobs at the node defaults: ewc_weight {_config_default('ewc_weight'):g}, score_weight "
        f"{_config_default('score_weight'):g}, noise_weight {_config_default('noise_weight'):g}, concepts_per_score "
        f"{_config_default('concepts_per_score')}, score temperature {DEFAULTS['score_temperature']:g}; Fisher "
        f"{DEFAULTS['fisher_draws']} draws, decay {DEFAULTS['fisher_decay']}; retention report {DEFAULTS['report_draws']} "
        f"draws per held-out picture ({HELD_OUT_PICTURES} per concept); c_0 = '{PRETRAINED_PROMPT}'"),
        ("forgetting = score when learned − score at the end (> 0: forgotten), averaged over every concept but the last; "
        "DC accuracy at stage s is over the candidates c_0 and the concepts learned by then (the retention report's), "
        "so later stages choose among more concepts"),
        (f"fidelity: {drift.SUBJECT_SEEDS} samples of the concept's own prompt (euler, {drift.SAMPLER_STEPS} steps, cfg "
        f"{drift.CFG}) against its training pictures; prior drift: the drift benchmark's {len(drift.PRIOR)} prior prompts x "
        f"{drift.PRIOR_SEEDS} seeds against the base model's"),
        "intervals: percentile bootstrap 95% over (sequence, seed) units, 4000 resamples (bench/drift/grid.bootstrap_mean)",
    ]
    notes += drift_sweep.missing_notes(plan, missing)
    rows = [{"method": m, **v} for m, v in summary["methods"].items()]
    md, js = write_results(name, rows, text, notes, folder=tables, extra={
        "mode": "quick" if args.quick else "full", "recipe": recipe, "summary": summary, "jobs": results,
        "missing": [j.label for j in missing], "reused": report["skipped"], "wall_s": wall, "cpu_s": cpu})
    default_run = tables == RESULTS and name == "forgetting" and not (args.quick or args.sequences or args.seeds
                                                                      or args.methods or args.steps)
    # docs/claims.md follows the default run, complete; quick or subsets leave it alone
    return drift_sweep.finish("forgetting", f"{md} and {js}", missing,
                              (lambda: claims.update_forgetting(js)) if default_run else None)
