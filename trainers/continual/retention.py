"""The retention report: how well each learned concept survives, on held-out images (never stored).

For the LoRA at a stage s of the pool (the snapshot after concept s; stage 0 = the base model), each
held-out image x of concept j is scored over the candidates C_s = {c_0, c_1, …, c_s} (concepts learned
by then; all concepts for the base model). With M draws of (t, ε) per image, shared by every
candidate and by every stage (so stages are compared on identical noise):

    DC accuracy   = fraction of concept j's images with argmin_c mean_m e_c(x; t_m, ε_m) = c_j
                    (the Diffusion Classifier decision rule, Li et al., ICCV 2023, Alg. 1)
    denoising loss = mean_m ‖F* − F_θs(x_t, c_j)‖² / D (per-element mean, the training loss's units)

and, at the last stage, how peaked the DC scores softmax(−e/τ) of each draw are at the pool's τ (scores.sharpness):
one-hot scores mean τ is too small for this model's error scale.

"when learned" is stage j, "now" the last stage; forgetting = now − when learned.
"""

import json

import torch

from ...lora.adapter import LoraAdapter
from .pool import ConceptPool
from .scores import SHARP, dc_errors, dc_logits, repeat_for_concepts, sharpness
from .seam import AdaptedModel


def assign_concepts(pool: ConceptPool, captions: list[str]) -> list[int]:
    """Each held-out image's concept: its caption is a concept's prompt, or names exactly one trigger."""
    prompts = {c.prompt.strip().casefold(): i for i, c in enumerate(pool.concepts)}
    out = []
    for caption in captions:
        text = caption.strip().casefold()
        if text in prompts:
            out.append(prompts[text])
            continue
        named = [i for i, c in enumerate(pool.concepts) if c.trigger.casefold() in text]
        if len(named) != 1:
            raise ValueError(
                f"held-out caption {caption!r} names {'no' if not named else 'more than one'} concept of the pool "
                f"(triggers {pool.triggers}): caption each held-out image with its concept's prompt or trigger"
            )
        out.append(named[0])
    return out


@torch.no_grad()
def evaluate(pool: ConceptPool, model_patcher, encode, latents: torch.Tensor, labels: list[int], *, draws: int = 8,
             seed: int = 0, all_stages: bool = False) -> dict:
    """Accuracy and loss per (stage, concept): the base model, each concept's own stage and the last one
    (every stage when `all_stages`)."""
    if not pool.concepts:
        raise ValueError("the concept pool is empty: add a concept before asking how well concepts are retained")
    if draws < 1:
        raise ValueError(f"the report needs at least one draw per image, got {draws}")
    missing = [c.trigger for i, c in enumerate(pool.concepts) if i not in labels]
    adapter = LoraAdapter.from_state_dict(model_patcher.model.diffusion_model, pool.concepts[0].lora)
    adapter.requires_grad_(False)
    seam = AdaptedModel(model_patcher, [adapter])
    x0 = seam.latents(latents)
    pretrained = seam.inputs(encode(pool.pretrained_prompt), x0)
    prompts = [seam.inputs(encode(c.prompt), x0) for c in pool.concepts]
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(x0.shape[0], draws, generator=generator)
    noise = torch.randn((x0.shape[0], draws, *x0.shape[1:]), generator=generator).to(seam.device)
    n = len(pool)
    stages = sorted(set(range(n + 1)) if all_stages else {0, n, *(j + 1 for j in labels)})
    results, last_stage_logits = {}, []
    for stage in stages:
        if stage == 0:
            adapter.strength = 0.0
        else:
            adapter.strength = 1.0
            adapter.load_lora_state_dict(pool.concepts[stage - 1].lora)
        learned = n if stage == 0 else stage
        candidates = [pretrained, *prompts[:learned]]
        wanted = [i for i, j in enumerate(labels) if j < learned and (all_stages or stage in (0, n, j + 1))]
        for i in wanted:
            errors = torch.zeros(len(candidates), device=seam.device)
            for m in range(draws):
                sigma, x_t, target = seam.noisy(x0[i:i + 1], u[i, m:m + 1], noise[i, m:m + 1])
                xs, inputs = repeat_for_concepts(x_t, candidates)
                predictions = seam.predict(xs, sigma.repeat(len(candidates)), inputs).view(len(candidates), *x_t.shape)
                errors += dc_errors(predictions, target)[0]
                if stage == n:
                    last_stage_logits.append(dc_logits(predictions, target, pool.temperature)[0])
            errors /= draws
            concept = labels[i]
            entry = results.setdefault((stage, concept), {"correct": 0, "images": 0, "loss": 0.0})
            entry["correct"] += int(int(torch.argmin(errors)) == concept + 1)
            entry["images"] += 1
            entry["loss"] += float(errors[concept + 1]) / x_t[0].numel()
    adapter.strength = 1.0
    concepts = []
    for j, c in enumerate(pool.concepts):
        row = {"trigger": c.trigger, "prompt": c.prompt, "images": labels.count(j), "accuracy": {}, "loss": {}}
        for stage in stages:
            entry = results.get((stage, j))
            if entry:
                name = "base" if stage == 0 else pool.concepts[stage - 1].trigger
                row["accuracy"][name] = entry["correct"] / entry["images"]
                row["loss"][name] = entry["loss"] / entry["images"]
        concepts.append(row)
    return {"method": pool.method, "stages": ["base", *(pool.concepts[s - 1].trigger for s in stages if s)],
            "candidates_now": ["c_0", *pool.triggers], "draws": draws, "seed": seed, "concepts": concepts,
            "without_held_out_images": missing,
            "scores_now": {"temperature": pool.temperature, **sharpness(torch.stack(last_stage_logits).cpu())}
            if last_stage_logits else None}


def markdown(report: dict) -> str:
    """One row per concept: accuracy and loss for the base model, when learned and now; forgetting."""
    stages = report["stages"]
    now = stages[-1]
    lines = [f"Retention ({report['method']}, {len(report['concepts'])} concepts, {report['draws']} draws per image, "
             f"seed {report['seed']}; candidates now: {', '.join(report['candidates_now'])})", "",
             "| concept | held-out images | DC accuracy base / when learned / now | denoising loss base / when learned / now | "
             "forgetting (loss now − when learned) |", "|---|---|---|---|---|"]
    for row in report["concepts"]:
        if not row["images"]:
            lines.append(f"| {row['trigger']} | 0 | – | – | – |")
            continue
        learned = row["trigger"]
        acc, loss = row["accuracy"], row["loss"]
        fmt = lambda d, s, f: f(d[s]) if s in d else "–"  # noqa: E731
        pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
        num = lambda v: f"{v:.4f}"  # noqa: E731
        forgetting = f"{loss[now] - loss[learned]:+.4f}" if now in loss and learned in loss else "–"
        lines.append(f"| {learned} | {row['images']} | {fmt(acc, 'base', pct)} / {fmt(acc, learned, pct)} / {fmt(acc, now, pct)} | "
                     f"{fmt(loss, 'base', num)} / {fmt(loss, learned, num)} / {fmt(loss, now, num)} | {forgetting} |")
    if report["without_held_out_images"]:
        lines += ["", f"No held-out images for: {', '.join(report['without_held_out_images'])}."]
    scores = report["scores_now"]
    lines += [] if scores is None else ["", f"DC scores now (τ = {scores['temperature']:g}): the largest probability's median is "
              f"{scores['median_largest_probability']:.3f} over {scores['score_vectors']} score vectors, above {SHARP} in "
              f"{scores['share_sharp']:.0%}." + (" Near 1 the scores are one-hot: the EWC-DC Fisher and DSC get little beyond "
                                                 "the arg-max; raise the Concept Pool's score_temperature."
                                                 if scores["median_largest_probability"] > SHARP else "")]
    return "\n".join(lines)


def as_json(report: dict) -> str:
    return json.dumps(report, indent=2)
