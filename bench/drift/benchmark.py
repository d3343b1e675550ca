"""The personalization task and its scores, run with the pack's own trainer and guider.

Subject: four pictures of an orange plus-shaped cross (a shape and colour the pretraining never showed),
captioned "a sks on a white background". Every regularizer trains a LoRA on them with the same settings
(trainers.loop.TrainingRun, regularizers built as the nodes' defaults build them); at two points of
training the LoRA is sampled with CFG, and at the end also with personalization guidance
(guidance.guider.make_guider). Every sample is scored against the base model at the same prompts and
seeds (metrics.py). One table row per (method, guidance) at the end of training; the plot shows subject
fidelity against drift along training.
"""

import json
import pathlib
import time

import torch

from ...shapes import classifier, dataset, metrics

PRIOR = [("circle", "red", "white"), ("square", "blue", "black"), ("triangle", "green", "gray"),
         ("circle", "yellow", "black"), ("square", "green", "white"), ("triangle", "red", "gray")]
ALIGN = [("blue", "black"), ("green", "white"), ("red", "gray"), ("yellow", "black")]
CLASS_PROMPT = "a shape on a white background"  # prior preservation's class: the subject caption, identifier -> "shape"
PRIOR_SEEDS, SUBJECT_SEEDS, ALIGN_SEEDS = 3, 6, 2
CFG, WEAK_STRENGTH, SAMPLER_STEPS = 4.0, 0.3, 12
METHODS = ("plain LoRA", "parameter anchor", "DCO", "APT", "prior preservation")
# --variants: plain LoRA against weaker settings than the nodes' defaults (does a gentler pull drift less at the
# same fidelity?) and APT without its adaptive training adjustment (is the loss scaling what stops it learning?)
VARIANTS = ("plain LoRA", "parameter anchor, weight 0.001", "DCO, beta 250", "APT, adaptive adjustment off")


def make_regularizers(name: str, class_latents, class_cond):
    """Each regularizer at its node's default settings."""
    from ...trainers.regularizers.apt import APT
    from ...trainers.regularizers.dco import DCO
    from ...trainers.regularizers.parameter_anchor import ParameterAnchor
    from ...trainers.regularizers.prior_preservation import PriorPreservation

    return {
        "plain LoRA": lambda: [],
        # the node defaults; the variants below override the one setting their names give
        "parameter anchor": lambda: [ParameterAnchor()],
        "DCO": lambda: [DCO()],
        "APT": lambda: [APT()],
        "prior preservation": lambda: [PriorPreservation(class_latents, class_cond, CLASS_PROMPT)],
        "parameter anchor, weight 0.001": lambda: [ParameterAnchor(weight=0.001)],
        "DCO, beta 250": lambda: [DCO(beta=250.0)],
        "APT, adaptive adjustment off": lambda: [APT(adaptive_adjustment=False)],
    }[name]()


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


def prompt_sets():
    """(name, prompt, seeds, labels) of every prompt the scores use."""
    sets = [("prior", dataset.caption(*p), range(100, 100 + PRIOR_SEEDS), p) for p in PRIOR]
    sets.append(("subject", dataset.subject_caption(), range(200, 200 + SUBJECT_SEEDS), None))
    sets += [("align", dataset.subject_caption(bg, colour), range(300, 300 + ALIGN_SEEDS), colour) for colour, bg in ALIGN]
    return sets


def sample_all(sampler: Sampler, make_guider) -> dict:
    return {prompt: sampler.images(make_guider, prompt, list(seeds)) for _, prompt, seeds, _ in prompt_sets()}


def score(net, samples: dict, base: dict, subject_images: torch.Tensor) -> dict:
    feats = lambda x: net.features(x).detach()  # noqa: E731
    with torch.no_grad():
        subject_f = feats(subject_images)
        prior_imgs, prior_base, shape_true, colour_true, align_pred, align_true = [], [], [], [], [], []
        fidelity = None
        for kind, prompt, seeds, label in prompt_sets():
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


def run(folder: pathlib.Path, steps: int, rank: int = 8, learning_rate: float = 1e-3, score_every: int | None = None,
        methods: tuple[str, ...] = METHODS, log=print) -> dict:
    import comfy.samplers

    from ...guidance.guider import make_guider
    from ...trainers.config import TrainConfig
    from ...trainers.data import TrainingData
    from ...trainers.loop import TrainingRun
    from ...shapes import weights

    model, clip, vae = weights.load_model(folder)
    net = weights.load_classifier(folder)
    sampler = Sampler(model, clip, vae)

    def base_guider(pos, neg):
        g = comfy.samplers.CFGGuider(model)
        g.set_conds(pos, neg)
        g.set_cfg(CFG)
        return g

    started = time.perf_counter()
    base = sample_all(sampler, base_guider)
    subject_images = dataset.draw_subject(4, seed=7)
    results = {"base model": {"CFG": {**score(net, base, base, subject_images), "step": 0}}}
    log(f"[drift] base model sampled and scored ({time.perf_counter() - started:.0f} s): {results['base model']['CFG']}")

    with torch.inference_mode():
        subject_latents = vae.encode(subject_images)
        class_latents = sampler.latents(base_guider(sampler.cond(CLASS_PROMPT), sampler.null), list(range(400, 408)))
    caption = dataset.subject_caption()
    data = TrainingData(subject_latents.clone(), [sampler.cond(caption)] * 4, sampler.null, [caption] * 4)
    config = TrainConfig(steps=steps, rank=rank, alpha=rank, learning_rate=learning_rate, targets="attention",
                         null_prompt_dropout=0.1, seed=0)
    every = score_every or max(1, steps // 2)
    checkpoints = sorted({*range(every, steps + 1, every), steps})
    curves, indicators = {}, {}
    for name in methods:
        t0 = time.perf_counter()
        regs = make_regularizers(name, class_latents.clone(), sampler.cond(CLASS_PROMPT))
        training = TrainingRun(model, data, config, regs)
        curves[name], results[name] = [], {}
        for step in range(1, steps + 1):
            if step - 1 in checkpoints:
                training.activate()  # sampling loaded the guider's clone, which took the LoRA hooks off
            training.step()
            if step in checkpoints:
                lora = {k: v.detach().clone() for k, v in training.adapter.lora_state_dict().items()}
                modes = ("cfg", "personalization") if step == steps else ("cfg",)
                for mode in modes:
                    guider = lambda pos, neg: make_guider(model, pos, neg, lora, cfg=CFG, mode=mode,  # noqa: E731
                                                          s_start=WEAK_STRENGTH, s_end=WEAK_STRENGTH)
                    scores = {**score(net, sample_all(sampler, guider), base, subject_images), "step": step}
                    if mode == "cfg":
                        curves[name].append(scores)
                    if step == steps:
                        results[name]["CFG" if mode == "cfg" else f"personalization guidance (s={WEAK_STRENGTH})"] = scores
        for reg in regs:  # APT's overfitting indicator at the end: what its loss scale 1 - γ had come to
            if hasattr(reg, "indicator"):
                ind = reg.indicator
                indicators[name] = {"gap_per_bin": (ind.m_pre - ind.m_theta).tolist(),
                                    "gamma_per_bin": ind.gamma(torch.arange(ind.bins)).tolist()}
        log(f"[drift] {name}: {steps} steps, scored at {checkpoints} ({time.perf_counter() - t0:.0f} s): {results[name]['CFG']}")
    return {"results": results, "curves": curves, "apt_indicators": indicators, "settings": {"steps": steps, "rank": rank, "learning_rate": learning_rate,
            "cfg": CFG, "weak_strength": WEAK_STRENGTH, "sampler_steps": SAMPLER_STEPS, "checkpoints": checkpoints}}


COLUMNS = [("subject_fidelity", "subject fidelity ↑"), ("text_alignment", "text alignment ↑"),
           ("prior_accuracy", "prior accuracy ↑"), ("prior_similarity_to_base", "prior similarity to base ↑"),
           ("prior_rmse_to_base", "prior pixel RMSE to base ↓")]


def table(out: dict) -> str:
    lines = ["| method | guidance | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, by_mode in out["results"].items():
        for mode, s in by_mode.items():
            lines.append(f"| {name} | {mode} | " + " | ".join(f"{s[k]:.3f}" for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


NEAR_BASE = 0.02  # plain LoRA's pixel RMSE below which its point is the base model's, too close for a ratio


def matched_fidelity(out: dict) -> list[dict]:
    """Each regularizer's CFG points along training against plain LoRA's curve (from the base model on): plain LoRA's
    drift when it first reached the same fidelity (metrics.matched_drift), and the ratio of the two."""
    base = out["results"]["base model"]["CFG"]
    reference = [(base["subject_fidelity"], base["prior_rmse_to_base"])]
    reference += [(s["subject_fidelity"], s["prior_rmse_to_base"]) for s in out["curves"]["plain LoRA"]]
    rows = []
    for name, curve in out["curves"].items():
        if name == "plain LoRA":
            continue
        for s in curve:
            plain = metrics.matched_drift(reference, s["subject_fidelity"])
            rows.append({"method": name, "step": s["step"], "subject_fidelity": s["subject_fidelity"],
                         "prior_rmse_to_base": s["prior_rmse_to_base"], "plain_lora_rmse_at_same_fidelity": plain,
                         "ratio": None if plain is None or plain < NEAR_BASE else s["prior_rmse_to_base"] / plain})
    return rows


def matched_table(rows: list[dict]) -> str:
    lines = ["| method | step | subject fidelity | prior pixel RMSE to base | plain LoRA's RMSE at that fidelity | ratio (< 1: less drift) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        plain = "not reached" if r["plain_lora_rmse_at_same_fidelity"] is None else f"{r['plain_lora_rmse_at_same_fidelity']:.3f}"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "–" if r["plain_lora_rmse_at_same_fidelity"] is None else "– (at the base model)"
        lines.append(f"| {r['method']} | {r['step']} | {r['subject_fidelity']:.3f} | {r['prior_rmse_to_base']:.3f} | {plain} | {ratio} |")
    return "\n".join(lines)


def main(folder: pathlib.Path, args) -> None:
    from ..common import RESULTS, write_results
    from . import plot

    name = "drift_variants" if args.variants else "drift"
    out = run(folder, args.steps, score_every=args.score_every, methods=VARIANTS if args.variants else METHODS)
    matched = matched_fidelity(out)
    text = table(out) + "\n\nAt matched fidelity (CFG along training, against plain LoRA's curve from the base model):\n\n"
    text += matched_table(matched)
    print(text)
    report = json.loads((folder / "pretrain.json").read_text())
    s = out["settings"]
    notes = [
        f"model: drift-bench pretrained by shapes/pretrain.py (preset {args.preset}; cache {folder.name}; "
        f"pretraining {report['timings']['unet']['wall_s']:.0f} s wall, {report['timings']['unet']['cpu_s']:.0f} s CPU, "
        f"{report['threads']} threads; classifier accuracy on renders {report['classifier_accuracy']})",
        f"subject: 4 pictures of an orange cross, caption '{dataset.subject_caption()}'; LoRA rank {s['rank']} on attention, "
        f"lr {s['learning_rate']}, {s['steps']} steps, batch 1, AdamW, 10% empty captions; regularizers "
        + ("at the settings their names give, the rest at node defaults" if args.variants else "at their node defaults"),
        f"sampling: euler, {s['sampler_steps']} steps, cfg {s['cfg']}; personalization guidance with weak strength s = {s['weak_strength']}",
        f"prior: {len(PRIOR)} dataset captions x {PRIOR_SEEDS} seeds, scored against the base model at the same seeds; "
        f"alignment: {len(ALIGN)} 'a <colour> sks' prompts x {ALIGN_SEEDS} seeds; fidelity: {SUBJECT_SEEDS} seeds",
        f"plot: bench/results/{name}.png, subject fidelity vs prior pixel RMSE to base along training "
        f"(CFG at steps {s['checkpoints']}); personalization guidance as separate points at the last step",
        *(f"{m} after {s['steps']} steps: indicator gap m_pre - m_theta per timestep bin "
          f"[{', '.join(f'{g:.4f}' for g in ind['gap_per_bin'])}], gamma [{', '.join(f'{g:.2f}' for g in ind['gamma_per_bin'])}]"
          for m, ind in out["apt_indicators"].items()),
    ]
    md, js = write_results(name, [{"method": m, "guidance": g, **v} for m, d in out["results"].items() for g, v in d.items()],
                           text, notes, extra={"matched_fidelity": matched, "apt_indicators": out["apt_indicators"]})
    curves_path = RESULTS / f"{name}_curves.json"
    curves_path.write_text(json.dumps(out["curves"], indent=2) + "\n")
    png = plot.fidelity_vs_drift(out, RESULTS / f"{name}.png")
    print(f"[bench] wrote {md}, {js}, {curves_path} and {png}")
