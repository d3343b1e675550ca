"""The personalization task and its scores, run with the pack's own trainer and guider.

Subject: four pictures of an orange plus-shaped cross (a shape and colour the pretraining never showed),
captioned "a sks on a white background". Every regularizer trains a LoRA on them with the same settings
(trainers.loop.TrainingRun, regularizers built as the nodes' defaults build them); at two points of
training the LoRA is sampled with CFG, and at the end also with personalization guidance
(guidance.guider.make_guider). Every sample is scored against the base model at the same prompts and
seeds (metrics.py). One table row per (method, guidance) at the end of training; the plot shows subject
fidelity against drift along training.
"""

import pathlib
import time
from functools import partial

import torch

from ...shapes import classifier, dataset, metrics

PRIOR = [("circle", "red", "white"), ("square", "blue", "black"), ("triangle", "green", "gray"),
         ("circle", "yellow", "black"), ("square", "green", "white"), ("triangle", "red", "gray")]
ALIGN = [("blue", "black"), ("green", "white"), ("red", "gray"), ("yellow", "black")]
CLASS_PROMPT = "a shape on a white background"  # prior preservation's class: the subject caption, identifier -> "shape"
PRIOR_SEEDS, SUBJECT_SEEDS, ALIGN_SEEDS = 3, 6, 2
CFG, WEAK_STRENGTH, SAMPLER_STEPS = 4.0, 0.3, 12
METHODS = ("plain LoRA", "parameter anchor", "DCO", "APT", "prior preservation")
# variants (choose them with --methods): a method with knobs changed from its node's defaults, written
# "METHOD, knob value[, knob value ...]" with the knob's words spaced ("parameter anchor, weight 0.1",
# "APT, adaptive adjustment off, temperature 1"); these are the ones the committed results use
VARIANTS = ("plain LoRA", "parameter anchor, weight 0.001", "parameter anchor, weight 0.1", "DCO, beta 250",
            "APT, adaptive adjustment off")


def _regularizer_classes() -> dict:
    """Method -> (regularizer class, its config class)."""
    from ...trainers.regularizers.apt import APT, APTConfig
    from ...trainers.regularizers.dco import DCO, DCOConfig
    from ...trainers.regularizers.parameter_anchor import ParameterAnchor, ParameterAnchorConfig

    return {"parameter anchor": (ParameterAnchor, ParameterAnchorConfig), "DCO": (DCO, DCOConfig), "APT": (APT, APTConfig)}


def parse_method(name: str) -> tuple[str, dict]:
    """"APT, adaptive adjustment off, temperature 1" -> ("APT", {"adaptive_adjustment": False, "temperature": 1.0}):
    the method and the knobs its name changes (on/off for a switch, a number, or one of a knob's options)."""
    import dataclasses

    base, *changes = [part.strip() for part in name.split(",")]
    if base in ("plain LoRA", "prior preservation"):
        if changes:
            raise SystemExit(f"method {name!r}: {base} takes no knobs here")
        return base, {}
    classes = _regularizer_classes()
    if base not in classes:
        raise SystemExit(f"unknown method {name!r}: write one of {list(METHODS)}, optionally followed by "
                         "', knob value' pairs, e.g. 'parameter anchor, weight 0.1'")
    fields = {f.name: f for f in dataclasses.fields(classes[base][1])}
    knobs = {}
    for change in changes:
        key = next((f for f in sorted(fields, key=len, reverse=True) if change.startswith(f.replace("_", " ") + " ")), None)
        if key is None:
            raise SystemExit(f"method {name!r}: {change!r} is not 'knob value' with a knob of {base} "
                             f"({', '.join(f.replace('_', ' ') for f in fields)})")
        words, value = key.replace("_", " "), change[len(key) + 1:]
        default = fields[key].default
        if isinstance(default, bool):
            if value not in ("on", "off"):
                raise SystemExit(f"method {name!r}: {words} is on or off, not {value!r}")
            knobs[key] = value == "on"
        elif isinstance(default, (int, float)):
            try:
                knobs[key] = float(value) if isinstance(default, float) else int(value)
            except ValueError:
                raise SystemExit(f"method {name!r}: {words} takes a number, not {value!r}") from None
        else:
            knobs[key] = value
    try:
        classes[base][1](**knobs)  # the config checks ranges and options, as the node's inputs do
    except (TypeError, ValueError) as e:
        raise SystemExit(f"method {name!r}: {e}") from None
    return base, knobs


def make_regularizers(name: str, class_latents, class_cond):
    """The method's regularizers at its node's defaults, with the knobs its name changes (parse_method)."""
    from ...trainers.regularizers.prior_preservation import PriorPreservation

    base, knobs = parse_method(name)
    if base == "plain LoRA":
        return []
    if base == "prior preservation":
        return [PriorPreservation(class_latents, class_cond, CLASS_PROMPT)]
    return [_regularizer_classes()[base][0](**knobs)]


class Sampler:
    """Euler, normal schedule, a fixed batch of seeds per prompt; decoded with the model's VAE."""

    def __init__(self, model, clip, vae):
        import comfy.samplers

        self.model, self.clip, self.vae = model, clip, vae
        self.null = self.encode("")
        self.sampler = comfy.samplers.sampler_object("euler")
        self.sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", SAMPLER_STEPS)
        self._conds = {}

    def encode(self, text):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def cond(self, text):
        if text not in self._conds:
            self._conds[text] = self.encode(text)
        return self._conds[text]

    def latents(self, guider, seeds) -> torch.Tensor:
        noise = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
        with torch.inference_mode():
            return guider.sample(noise, torch.zeros_like(noise), self.sampler, self.sigmas, disable_pbar=True, seed=seeds[0])

    def images(self, make_guider, prompt, seeds) -> torch.Tensor:
        with torch.inference_mode():
            return self.vae.decode(self.latents(make_guider(self.cond(prompt), self.null), seeds)).float().cpu()


def prompt_sets(prior=PRIOR, align=ALIGN):
    """(name, prompt, seeds, labels) of every prompt the scores use: prior captions (shape, colour, background) and
    alignment prompts "a <colour> sks on a <background> background" given as (colour, background)."""
    sets = [("prior", dataset.caption(*p), range(100, 100 + PRIOR_SEEDS), tuple(p)) for p in prior]
    sets.append(("subject", dataset.subject_caption(), range(200, 200 + SUBJECT_SEEDS), None))
    sets += [("align", dataset.subject_caption(bg, colour), range(300, 300 + ALIGN_SEEDS), colour) for colour, bg in align]
    return sets


def batched_cond(conds: list) -> list:
    """One conditioning whose batch holds each prompt's embedding in turn (ComfyUI uses a conditioning whose batch
    equals the latent batch as it is), so every prompt of the score set samples in one call."""
    tensors = [c[0][0] for c in conds]
    return [[torch.cat(tensors), dict(conds[0][0][1])]]


def sample_all(sampler: Sampler, make_guider, prior=PRIOR, align=ALIGN) -> dict:
    """Every prompt of prompt_sets() at its seeds, in one sampling call (one guider: the LoRA is merged once)."""
    return sample_sets(sampler, make_guider, [(prompt, list(seeds)) for _, prompt, seeds, _ in prompt_sets(prior, align)])


def sample_sets(sampler: Sampler, make_guider, sets: list) -> dict:
    """prompt -> its decoded samples, for every (prompt, seeds) of `sets`, in one sampling call."""
    cond = batched_cond([sampler.cond(p) for p, seeds in sets for _ in seeds])
    seeds = [s for _, ss in sets for s in ss]
    with torch.inference_mode():
        images = sampler.vae.decode(sampler.latents(make_guider(cond, sampler.null), seeds)).float().cpu()
    out, i = {}, 0
    for prompt, ss in sets:
        out[prompt], i = images[i:i + len(ss)], i + len(ss)
    return out


def score(net, samples: dict, base: dict, subject_images: torch.Tensor, prior=PRIOR, align=ALIGN) -> dict:
    feats = lambda x: net.features(x).detach()  # noqa: E731
    with torch.no_grad():
        subject_f = feats(subject_images)
        prior_imgs, prior_base, shape_true, colour_true, align_pred, align_true = [], [], [], [], [], []
        fidelity = None
        for kind, prompt, seeds, label in prompt_sets(prior, align):
            n = len(seeds)
            if kind == "prior":
                prior_imgs.append(samples[prompt])
                prior_base.append(base[prompt])
                shape_true += [dataset.SHAPES.index(label[0])] * n
                colour_true += [list(dataset.COLOURS).index(label[1])] * n
            elif kind == "subject":
                fidelity = metrics.subject_fidelity(feats(samples[prompt]), subject_f)
            else:
                align_pred += list(classifier.predict(net, samples[prompt])[1])
                align_true += [list(dataset.COLOURS).index(label)] * n
        prior_imgs, prior_base = torch.cat(prior_imgs), torch.cat(prior_base)
        shape_pred, colour_pred = classifier.predict(net, prior_imgs)
        return {
            "subject_fidelity": fidelity,
            "text_alignment": metrics.match_rate(torch.tensor(align_pred), torch.tensor(align_true)),
            "prior_accuracy": metrics.prior_accuracy(torch.tensor(shape_pred), torch.tensor(colour_pred),
                                                     torch.tensor(shape_true), torch.tensor(colour_true)),
            "prior_similarity_to_base": metrics.paired_similarity(feats(prior_imgs), feats(prior_base)),
            "prior_rmse_to_base": metrics.paired_rmse(prior_imgs, prior_base),
        }


_LOADED = {}


def base_guider(model, positive, negative, cfg: float = CFG):
    """The base model sampled with stock CFG (the reference every score compares against)."""
    import comfy.samplers

    g = comfy.samplers.CFGGuider(model)
    g.set_conds(positive, negative)
    g.set_cfg(cfg)
    return g


def _context(folder: pathlib.Path, prior=PRIOR, align=ALIGN):
    """Model, classifier, sampler and the base model's samples, loaded once per process (jobs share them read-only)."""
    key = (str(folder), tuple(map(tuple, prior)), tuple(map(tuple, align)))
    if key not in _LOADED:
        from ...shapes import weights

        model, clip, vae = weights.load_model(folder)
        sampler = Sampler(model, clip, vae)
        base_model = partial(base_guider, model)
        base = sample_all(sampler, base_model, prior, align)
        with torch.inference_mode():
            class_latents = sampler.latents(base_model(sampler.cond(CLASS_PROMPT), sampler.null), list(range(400, 408)))
        _LOADED[key] = {"model": model, "vae": vae, "net": weights.load_classifier(folder), "sampler": sampler,
                                "base": base, "class_latents": class_latents}
    return _LOADED[key]


def run_job(job, folder: pathlib.Path) -> dict:
    """One (subject, method, knobs, seed) job: train a LoRA on the subject's 4 pictures, score it with CFG at each
    checkpoint and, when knobs["guidance"], also with personalization guidance (weak strength s) and autoguidance
    (weak model = the first checkpoint's LoRA) at the last, all at the same cfg. Returns a JSON-able dict."""
    from ...guidance.guider import make_guider
    from ...trainers.config import TrainConfig
    from ...trainers.data import TrainingData
    from ...trainers.loop import TrainingRun
    from . import grid

    t0, c0 = time.perf_counter(), time.process_time()
    k = job.knob
    prior, align = k.get("prior", PRIOR), k.get("align", ALIGN)
    ctx = _context(folder, prior, align)
    model, sampler, net = ctx["model"], ctx["sampler"], ctx["net"]
    steps, checkpoints = k["steps"], sorted(k["checkpoints"])
    subject_images = grid.SUBJECTS[job.subject].render(4, seed=7)
    with torch.inference_mode():
        subject_latents = ctx["vae"].encode(subject_images)
    caption = dataset.subject_caption()
    data = TrainingData(subject_latents.clone(), [sampler.cond(caption)] * 4, sampler.null, [caption] * 4)
    config = TrainConfig(steps=steps, rank=k["rank"], alpha=k["rank"], learning_rate=k["learning_rate"],
                         targets="attention", null_prompt_dropout=0.1, seed=job.seed)
    regs = make_regularizers(job.method, ctx["class_latents"].clone(), sampler.cond(CLASS_PROMPT))
    training = TrainingRun(model, data, config, regs)
    curve, loras, final = [], {}, {}
    for step in range(1, steps + 1):
        if step == 1 or step - 1 in checkpoints:  # not every step: each load runs ComfyUI's leak check (gc.collect)
            training.activate()  # sampling loaded the guider's clone, which took the LoRA hooks off
        training.step()
        if step in checkpoints:
            loras[step] = {n: v.detach().clone() for n, v in training.adapter.lora_state_dict().items()}
            guider = partial(make_guider, model, lora=loras[step], cfg=CFG, mode="cfg")
            scores = score(net, sample_all(sampler, guider, prior, align), ctx["base"], subject_images, prior, align)
            curve.append({**scores, "step": step})
    final["CFG"] = {kk: v for kk, v in curve[-1].items() if kk != "step"}
    if k.get("guidance"):
        last, first = loras[checkpoints[-1]], loras[checkpoints[0]]
        for mode, extra in (("personalization guidance", {"mode": "personalization", "s_start": WEAK_STRENGTH,
                                                            "s_end": WEAK_STRENGTH}),
                            # the knob the guidance claims turn on: the weak model with no LoRA at all (s = 0)
                            ("personalization guidance, s = 0", {"mode": "personalization", "s_start": 0.0, "s_end": 0.0}),
                            ("autoguidance", {"mode": "autoguidance", "weak_lora": first})):
            guider = partial(make_guider, model, lora=last, cfg=CFG, **extra)
            final[mode] = score(net, sample_all(sampler, guider, prior, align), ctx["base"], subject_images, prior, align)
    base = score(net, ctx["base"], ctx["base"], subject_images, prior, align)
    return {"key": job.key, "job": job.record(), "base": base, "curve": curve, "final": final,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


COLUMNS = [("subject_fidelity", "subject fidelity ↑"), ("text_alignment", "text alignment ↑"),
           ("prior_accuracy", "prior accuracy ↑"), ("prior_similarity_to_base", "prior similarity to base ↑"),
           ("prior_rmse_to_base", "prior pixel RMSE to base ↓")]


MODES = {
    # the default set: every subject, 3 seeds, every method; plain LoRA also sampled with the guidance modes
    # (and the anchor at ten times its default weight: does a stronger pull drift less at the same fidelity?)
    "full": {"methods": (*METHODS, "parameter anchor, weight 0.1"), "seeds": (0, 1, 2), "knobs": {"steps": 300, "checkpoints": (50, 100, 150, 200, 250, 300),
                                                             "rank": 8, "learning_rate": 1e-3}},
    # the same subjects and seeds, the methods the claims table reads, shorter training
    "quick": {"methods": ("plain LoRA", "parameter anchor", "APT"), "seeds": (0, 1, 2),
              "knobs": {"steps": 100, "checkpoints": (50, 100), "rank": 8, "learning_rate": 1e-3}},
}


def parse_prior(text: str) -> tuple[str, str, str]:
    """"red circle on black" -> ("circle", "red", "black"): a pretraining caption the classifier can read."""
    words = text.lower().replace("a ", " ").replace("background", "").split()
    shape = next((w for w in words if w in dataset.SHAPES), None)
    colours = [w for w in words if w in dataset.COLOURS]
    backgrounds = [w for w in words[words.index("on") + 1:] if w in dataset.BACKGROUNDS] if "on" in words else []
    if shape is None or not colours or not backgrounds:
        raise SystemExit(f"--prior {text!r}: write '<colour> <shape> on <background>' with a colour of {list(dataset.COLOURS)}, "
                         f"a shape of {list(dataset.SHAPES)} and a background of {list(dataset.BACKGROUNDS)}")
    return shape, colours[0], backgrounds[0]


def parse_align(text: str) -> tuple[str, str]:
    """"blue on black" -> ("blue", "black"): the prompt "a blue sks on a black background"."""
    words = text.lower().split()
    if len(words) != 3 or words[1] != "on" or words[0] not in dataset.COLOURS or words[2] not in dataset.BACKGROUNDS:
        raise SystemExit(f"--align {text!r}: write '<colour> on <background>' with a colour of {list(dataset.COLOURS)} "
                         f"and a background of {list(dataset.BACKGROUNDS)}")
    return words[0], words[2]


def jobs_for(args) -> list:
    from . import grid

    mode = MODES[args.mode]
    knobs = dict(mode["knobs"])
    if args.steps:
        knobs["steps"] = args.steps
        knobs["checkpoints"] = tuple(sorted({*range(args.score_every or max(1, args.steps // 2), args.steps + 1,
                                                    args.score_every or max(1, args.steps // 2)), args.steps}))
    if args.prior:
        knobs["prior"] = tuple(parse_prior(p) for p in args.prior)
    if args.align:
        knobs["align"] = tuple(parse_align(p) for p in args.align)
    methods = tuple(args.methods or mode["methods"])
    for m in methods:
        parse_method(m)  # refuses an unknown method or knob, naming what there is
    if "plain LoRA" not in methods:
        methods = ("plain LoRA", *methods)  # the matched-fidelity reference
    return grid.expand(args.subjects or list(grid.SUBJECTS), methods, args.seeds or mode["seeds"], knobs)


def summary_table(summary: dict) -> str:
    cell = lambda v: f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})"  # noqa: E731
    lines = ["| method | guidance | n | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for name, row in summary["final"].items():
        method, mode = name.split(" | ")
        lines.append(f"| {method} | {mode} | {row['n']} | " + " | ".join(cell(row[k]) for k, _ in COLUMNS) + " |")
    lines += ["", "At matched fidelity (last checkpoint, CFG; plain LoRA's drift interpolated along its own checkpoints "
              "for the same subject and seed):", "",
              "| method | drift / plain LoRA's at the same fidelity (< 1: less drift) | units | unmatched | subject-fidelity "
              "gain / plain LoRA's (summed over units) |", "|---|---|---|---|---|"]
    ratio = lambda v: "–" if v is None else f"{v[0]:.2f} ({v[1]:.2f}–{v[2]:.2f})"  # noqa: E731
    for method, m in summary["matched"].items():
        share = summary.get("gain_share", {}).get(method, {}).get("share")
        lines.append(f"| {method} | {ratio(m['ratio'])} | {m['n']} | {m['unmatched']} | {ratio(share)} |")
    lines += ["", "Paired differences (same subject and seed):", "", "| comparison | mean (95% interval) | n |", "|---|---|---|"]
    for name, d in summary["deltas"].items():
        lines.append(f"| {name} | {d['delta'][0]:+.3f} ({d['delta'][1]:+.3f} to {d['delta'][2]:+.3f}) | {d['n']} |")
    return "\n".join(lines)


def main(folder: pathlib.Path, args, tables: pathlib.Path | None = None) -> int:
    """Run the jobs not yet in the results folder as a sweep on Ray (sweep.py), then build the tables from every job's
    drift.json into `tables` (default bench/results). Returns the exit code: 0 every job done, 1 some failed (the
    tables cover the others and name the missing ones)."""
    from ..common import RESULTS, write_results
    from . import claims, grid, plot, sweep

    tables = tables or RESULTS
    jobs = jobs_for(args)
    name = args.name or ("drift" if args.mode == "full" else f"drift_{args.mode}")
    recipe = sweep.recipe_of(folder)
    results_dir = args.results or sweep.default_results(name)
    threads = args.threads or 1
    plan = sweep.make_sweep(jobs, recipe, results_dir, cpus_per_job=threads)
    print(f"[drift] {len(jobs)} jobs ({args.mode} mode): {len({j.subject for j in jobs})} subjects x "
          f"{len({j.method for j in jobs})} methods x {len({j.seed for j in jobs})} seeds, knobs {jobs[0].knob}; "
          f"model recipe {recipe}; results in {plan.results}", flush=True)
    ran = sweep.run(plan, "drift", sweep.RESULT_FILE, address=args.address, workers=args.workers, threads=threads,
                    dry_run=getattr(args, "dry_run", False))
    if ran is None:
        return 0
    report, wall, results, missing = ran
    cpu = sum(r["cpu_s"] for r in results)
    summary = grid.summarise(results)
    text = summary_table(summary)
    print(text)
    k = jobs[0].knob
    notes = [
        sweep.run_note(plan, report, wall, cpu, threads, args.load, args.address, args.workers),
        f"subjects: {', '.join(sorted({j.subject for j in jobs}))} (bench/drift/grid.py SUBJECTS); seeds "
        f"{sorted({j.seed for j in jobs})}; every subject captioned '{dataset.subject_caption()}'",
        f"training: LoRA rank {k['rank']} on attention, lr {k['learning_rate']}, {k['steps']} steps, batch 1, AdamW, "
        f"10% empty captions; regularizers at their node defaults; scored with CFG at steps {list(k['checkpoints'])}",
        f"sampling: euler, {SAMPLER_STEPS} steps, cfg {CFG}; plain LoRA's last checkpoint also with personalization "
        f"guidance (s = {WEAK_STRENGTH}, and s = 0) and autoguidance (weak model: its first checkpoint), same cfg",
        "intervals: percentile bootstrap 95% over (subject, seed) units, 4000 resamples (grid.bootstrap_mean)",
        f"model: the shapes model in {folder} (recipe {recipe})",
    ]
    notes += sweep.missing_notes(plan, missing)
    rows = [{"method": n.split(" | ")[0], "guidance": n.split(" | ")[1], **v} for n, v in summary["final"].items()]
    md, js = write_results(name, rows, text, notes, extra={"mode": args.mode, "summary": summary, "jobs": results,
                                                          "missing": [j.label for j in missing], "reused": report["skipped"], "wall_s": wall,
                                                          "cpu_s": cpu}, folder=tables)
    png = plot.fidelity_vs_drift(mean_curves(results), tables / f"{name}.png")
    default_run = tables == RESULTS and (args.mode == "quick" and name == "drift_quick" or args.mode == "full" and name == "drift")
    return sweep.finish("drift", f"{md}, {js} and {png}", missing, (lambda: claims.update(js)) if default_run else None)


def mean_curves(results: list[dict]) -> dict:
    """Per method, the mean (over subject and seed) of each checkpoint's scores and of the last checkpoint's per
    guidance mode, shaped as plot.fidelity_vs_drift reads them."""
    import numpy as np

    by = {}
    for r in results:
        by.setdefault(r["job"]["method"], []).append(r)
    keys = ("subject_fidelity", "prior_rmse_to_base")
    mean = lambda rows: {k: float(np.mean([row[k] for row in rows])) for k in keys}  # noqa: E731
    out = {"curves": {}, "results": {"base model": {"CFG": mean([r["base"] for r in by.get("plain LoRA", results)])}}}
    for method, rs in by.items():
        out["curves"][method] = [{**mean([r["curve"][i] for r in rs]), "step": rs[0]["curve"][i]["step"]}
                                 for i in range(len(rs[0]["curve"]))]
        out["results"][method] = {mode: mean([r["final"][mode] for r in rs]) for mode in rs[0]["final"]}
    return out
