"""Write the example workflows (UI format) from the live node schemas: `./driftless python tools/build_examples.py`."""

import json
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from ui_workflow import UIWorkflow  # noqa: E402

from driftless.headless import demo_backbones, host  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "example_workflows"

# Each example exists twice: for a real SD1.5 checkpoint (what a user runs) and as a tiny twin the tests run.
PROFILES = {
    "real": dict(photos="my_subject_*.png", photo_size=512,
                 caption="a photo of sks dog",
                 prompt="a photo of sks dog on a beach", grid_prompt="a photo of sks dog in the snow", size=512,
                 train_steps=500, learning_rate=1e-4, rank=16, sample_steps=30, folder="my_subject",
                 class_prompt="a photo of a dog", prior_prompt="a photo of a dog on a beach", class_images=50,
                 class_noun="dog", clip_model="clip-vit-base-patch32", dino_model="dino-vits16", compare_batch=4,
                 dataset="my_subject", resolution=512, bucket_step=64),
    "tiny": dict(photos="driftless_demo/sks_cat_*.png", photo_size=0, caption="a photo of sks cat",
                 prompt="a photo of sks cat on a beach", grid_prompt="a photo of sks cat in the snow", size=64,
                 train_steps=30, learning_rate=1e-3, rank=8, sample_steps=12, folder="driftless_demo",
                 class_prompt="a photo of a cat", prior_prompt="a photo of a cat on a beach", class_images=4,
                 class_noun="cat", clip_model=demo_backbones.CLIP, dino_model=demo_backbones.DINO, compare_batch=1,
                 dataset="driftless_demo/sks_cat_folder", resolution=64, bucket_step=16),
}
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
REAL_NOTE = """

**Real model**: put an SD1.5 checkpoint in `models/checkpoints` (the workflow names `{ckpt}`; pick yours),
and {photos_text}
Replace `sks dog` by your trigger word and class. On a 12 GB card keep batch 1; on CPU expect hours."""


TINY_NOTE = """

**Tiny twin**: runs in a minute on a CPU with no weights. For a real model, use the workflow of the same
name in `example_workflows/` (Load Checkpoint instead of the tiny model)."""

REAL_METRICS_NOTE = """

**Metrics** (weights on your disk, never downloaded): put CLIP ViT-B/32 in
`models/driftless_metrics/clip-vit-base-patch32/` and DINO ViT-S/16 in `models/driftless_metrics/dino-vits16/`,
each folder as its Hugging Face repository holds it (`config.json`, `model.safetensors`,
`preprocessor_config.json`, and CLIP's tokenizer files), e.g. on a machine with internet
`hf download openai/clip-vit-base-patch32 --local-dir models/driftless_metrics/clip-vit-base-patch32` and
`hf download facebook/dino-vits16 --local-dir models/driftless_metrics/dino-vits16`. Only safetensors are
read (convert a `pytorch_model.bin`-only folder first; the README's Measure section says how). Any other CLIP
or DINO folder there is listed too; `none` skips a backbone."""

TINY_METRICS_NOTE = """

**Metrics** use random tiny CLIP and DINO folders (their scores mean nothing) in
`models/driftless_metrics/driftless_demo/`; the headless runner writes them. For the web UI, write them once with
`./driftless python -m driftless.headless.demo_backbones PATH/TO/ComfyUI/models`."""


PHOTOS_TEXT = ("photos of your subject in `input/` as `my_subject_1.png`, `my_subject_2.png`, … (**Driftless Load "
               "Images**\ntakes every file matching `my_subject_*.png`, centre-cropped to 512 x 512; {count} are "
               "enough, more are fine).")


def start(info: dict, profile: str, name: str, note: str, height: int, photos: int, metrics: bool = False,
          photos_text: str = PHOTOS_TEXT, profiles: dict = PROFILES, architecture: str = "sd15-tiny",
          checkpoint: str = CHECKPOINT, real_note: str = None):
    """(profile settings, workflow, model loader node) with the explanatory note in the first column."""
    p = profiles[profile]
    w = UIWorkflow(info)
    if profile == "tiny":
        model = w.node("DriftlessTinyModel", 0, architecture=architecture, seed=0)
        headless = "./driftless demo" if name == "personalize_and_guide" else f"./driftless run example_workflows/tiny/{name}_tiny.json"
        text = note.format(suffix=" (tiny model)", folder=p["folder"], headless=headless) + TINY_NOTE
        w.note(0, text + (TINY_METRICS_NOTE if metrics else ""), height=height + (90 if metrics else 0))
    else:
        model = w.node("CheckpointLoaderSimple", 0, ckpt_name=checkpoint)
        headless = f"./driftless run example_workflows/{name}.json --extra-model-paths-config your_paths.yaml"
        text = note.format(suffix="", folder=p["folder"], headless=headless) + (real_note or REAL_NOTE).format(
            ckpt=checkpoint, photos_text=photos_text.format(count=photos))
        w.note(0, text + (REAL_METRICS_NOTE if metrics else ""), height=height + (290 if metrics else 90))
    return p, w, model


def photos(w: UIWorkflow, p: dict, column: int, files: str | None = None, title: str | None = None):
    """The subject's photos as one batch: Driftless Load Images (current on every tested ComfyUI release, where the core
    Batch Images node is deprecated from 0.33 on) naming the profile's files or pattern."""
    extra = {"title": title} if title else {}
    return w.node("DriftlessLoadImages", column, files=files or p["photos"], size=p["photo_size"], **extra)


def backbones(p: dict) -> dict:
    """The metrics nodes' backbone widgets of a profile, and the room for the table they show after a run (an image
    about 900 x 240: at 680 wide it is legible); the node spans two columns."""
    return dict(clip_model=p["clip_model"], dino_model=p["dino_model"], preview_height=200, node_width=680)

DEMO_NOTE = """## Driftless: photos -> LoRA -> guided samples -> metrics{suffix}

1. three photos of the subject -> **Driftless Training Data** (VAE + CLIP encode them with the caption)
2. **Driftless Train LoRA** trains on a clone of the MODEL (the input MODEL stays as it was)
3. **Driftless Save LoRA** writes `models/loras/{folder}/lora.safetensors`
4. the same seed sampled with personalization guidance (the LoRA at strength 0.3 as CFG's unconditional
   branch) and with the base MODEL, side by side
5. **Driftless Personalization Metrics**: CLIP-T, CLIP-I and DINO of the guided samples against the photos;
   **Driftless Drift Metrics**: the base and the personalized MODEL on the prior prompt (no trigger word) at
   the same seed, compared pair by pair (1 = unchanged). Each writes a JSON report into `output/{folder}/`
   and shows its table on the node.

Headless: `{headless}`."""


def guided_sample(w, p: dict, model, train, pos, neg, latent):
    """The trained MODEL sampled through the Personalization Guider (s = 0.3, cfg 5, euler, seed 42) with
    SamplerCustomAdvanced in columns 4–5; returns the sampler node (its output 0 is the latent)."""
    guider = w.node("DriftlessPersonalizationGuider", 4, title="Personalization guidance (s = 0.3)", model=train.out(0),
                    lora=train.out(1), positive=pos, null=neg, cfg=5.0, weak_strength=0.3, schedule="constant",
                    weak_strength_end=0.3, start=0.0, end=1.0, mode="personalization")
    noise = w.node("RandomNoise", 4, noise_seed=42)
    sampler = w.node("KSamplerSelect", 4, sampler_name="euler")
    sigmas = w.node("BasicScheduler", 4, model=model, scheduler="normal", steps=p["sample_steps"], denoise=1.0)
    return w.node("SamplerCustomAdvanced", 5, title="Sample (personalized, guided)", noise=noise, guider=guider,
                  sampler=sampler, sigmas=sigmas, latent_image=latent)


def demo(info: dict, profile: str = "tiny") -> dict:
    p, w, model = start(info, profile, "personalize_and_guide", DEMO_NOTE, height=500, photos=3, metrics=True)
    batch = photos(w, p, 1)
    data = w.node("DriftlessTrainingData", 2, clip=model.out(1), captions=p["caption"], images=batch, vae=model.out(2))
    train = w.node("DriftlessTrainLoRA", 2, model=model, training_data=data, steps=p["train_steps"],
                   learning_rate=p["learning_rate"], rank=p["rank"], alpha=float(p["rank"]), run_name=p["folder"],
                   checkpoint_every=0 if profile == "tiny" else 100, resume_from="")
    w.node("DriftlessSaveLoRA", 3, lora=train.out(1), filename=f"{p['folder']}/lora", overwrite=True)
    w.node("SaveImage", 3, title="Loss curve", images=train.out(3), filename_prefix=f"{p['folder']}/loss")
    pos = w.node("CLIPTextEncode", 3, title="Prompt", clip=model.out(1), text=p["prompt"])
    neg = w.node("CLIPTextEncode", 3, title="Null prompt", clip=model.out(1), text="")
    latent = w.node("EmptyLatentImage", 3, width=p["size"], height=p["size"], batch_size=2)
    guided = guided_sample(w, p, model, train, pos, neg, latent)
    base = w.node("KSampler", 5, title="Sample (base)", model=model.out(0), positive=pos, negative=neg, latent_image=latent,
                  seed=42, steps=p["sample_steps"], cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    decoded = {}
    for label, samples in (("personalized", guided.out(0)), ("base", base)):
        decoded[label] = w.node("VAEDecode", 6, samples=samples, vae=model.out(2))
        w.node("SaveImage", 7, title=f"Save ({label})", images=decoded[label], filename_prefix=f"{p['folder']}/{label}")
    # drift: the base and the personalized MODEL (no guidance) on the prior prompt at the same seed
    prior = w.node("CLIPTextEncode", 3, title="Prior prompt (no trigger word)", clip=model.out(1), text=p["prior_prompt"])
    prior_images = {}
    for label, source in (("base", model.out(0)), ("personalized", train.out(0))):
        latents = w.node("KSampler", 5, title=f"Prior ({label})", model=source, positive=prior, negative=neg,
                         latent_image=latent, seed=42, steps=p["sample_steps"], cfg=5.0, sampler_name="euler",
                         scheduler="normal", denoise=1.0)
        prior_images[label] = w.node("VAEDecode", 6, samples=latents, vae=model.out(2))
    pair = w.node("ImageStitch", 7, image1=prior_images["base"], image2=prior_images["personalized"], direction="right",
                  match_image_size=True, spacing_width=4, spacing_color="white")
    w.node("SaveImage", 7, title="Prior prompt: base | personalized", images=pair, filename_prefix=f"{p['folder']}/prior")
    w.node("DriftlessPersonalizationMetrics", 8, title="Metrics (guided samples vs photos)",
           generated_images=decoded["personalized"], reference_images=batch, prompts=p["prompt"], identifier="sks",
           class_noun=p["class_noun"], **backbones(p), filename_prefix=f"{p['folder']}/metrics")
    w.node("DriftlessDriftMetrics", 8, title="Drift (prior prompt: base vs personalized)",
           base_images=prior_images["base"], personalized_images=prior_images["personalized"], **backbones(p),
           filename_prefix=f"{p['folder']}/drift", prompts=p["prior_prompt"], identifier="sks")
    return w.to_json()


GRID_NOTE = """## Personalization guidance grid{suffix}

The same seed sampled with the **Driftless Personalization Guider** at weak strength
s = 0, 0.25, 0.5 and 1 (s = 1 is ordinary CFG of the personalized model), after a short training run.
Lower s guides away from what the base model alone would draw.

Headless: `{headless}`."""


def guidance_grid(info: dict, profile: str = "tiny") -> dict:
    p, w, model = start(info, profile, "guidance_grid", GRID_NOTE, height=300, photos=3)
    batch = photos(w, p, 0)
    data = w.node("DriftlessTrainingData", 1, clip=model.out(1), captions=p["caption"], images=batch, vae=model.out(2))
    train = w.node("DriftlessTrainLoRA", 1, model=model, training_data=data, steps=p["train_steps"],
                   learning_rate=p["learning_rate"], rank=p["rank"], alpha=float(p["rank"]), run_name=p["folder"] + "_grid",
                   checkpoint_every=0, resume_from="")
    pos = w.node("CLIPTextEncode", 2, title="Prompt", clip=model.out(1), text=p["grid_prompt"])
    null = w.node("CLIPTextEncode", 2, title="Null prompt", clip=model.out(1), text="")
    noise = w.node("RandomNoise", 2, noise_seed=7)
    sampler = w.node("KSamplerSelect", 2, sampler_name="euler")
    sigmas = w.node("BasicScheduler", 2, model=model, scheduler="normal", steps=p["sample_steps"], denoise=1.0)
    latent = w.node("EmptyLatentImage", 2, width=p["size"], height=p["size"], batch_size=1)
    for s in (0.0, 0.25, 0.5, 1.0):
        w.align(3, 4, 5, 6)
        guider = w.node("DriftlessPersonalizationGuider", 3, title=f"Guider s = {s}", model=train.out(0), lora=train.out(1),
                        positive=pos, null=null, cfg=5.0, weak_strength=s, schedule="constant", weak_strength_end=s,
                        start=0.0, end=1.0, mode="personalization")
        sampled = w.node("SamplerCustomAdvanced", 4, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                         latent_image=latent)
        image = w.node("VAEDecode", 5, samples=sampled.out(0), vae=model.out(2))
        w.node("SaveImage", 6, title=f"s = {s:g}", images=image, filename_prefix=f"{p['folder']}_grid/s{s:g}")
    return w.to_json()


COMPARE_NOTE = """## Drift regularizers side by side{suffix}

The same photos, seed and settings trained five times: plain LoRA, **parameter anchor**, **DCO**, **APT**
and **prior preservation** (class images generated in-graph by the base model, cached on disk).
Every trained MODEL is sampled at the same seed twice:
- with the subject prompt (top row: did it learn the subject?),
- with the prior prompt, the class without the trigger word (bottom row, the base model first: how far did
  it drift from what the base model drew?).

The metrics table on the right, one row per method: **Driftless Personalization Metrics** scores the
subject samples against the photos (CLIP-T, CLIP-I, DINO: higher = closer), **Driftless Drift Metrics** the
prior samples against the base model's at the same seed (CLIP-I, DINO: 1 = no drift). Each shows its table
on the node and writes `output/{folder}_compare/metrics/<method>_*.json` or `.../drift/<method>_*.json`.

Headless: `{headless}`."""

REGULARIZERS = {
    "plain LoRA": None,
    "parameter anchor": ("DriftlessParameterAnchor", {}),
    "DCO": ("DriftlessDCO", {}),
    "APT": ("DriftlessAPT", {}),
    "prior preservation": ("DriftlessPriorPreservation", {}),
}


def regularizer_comparison(info: dict, profile: str = "tiny") -> dict:
    p, w, model = start(info, profile, "regularizer_comparison", COMPARE_NOTE, height=560, photos=3, metrics=True)
    if profile == "tiny":  # five trainings: keep the twin the tests run short
        p = {**p, "train_steps": 10, "sample_steps": 4, "class_images": 2}
    batch = photos(w, p, 1)
    data = w.node("DriftlessTrainingData", 1, clip=model.out(1), captions=p["caption"], images=batch, vae=model.out(2))
    class_images = w.node("DriftlessClassImages", 2, model=model, clip=model.out(1), vae=model.out(2),
                          class_prompt=p["class_prompt"], count=p["class_images"], seed=0, width=p["size"],
                          height=p["size"], steps=p["sample_steps"], cfg=5.0, sampler_name="euler", scheduler="normal")
    trained = {}
    for label, spec in REGULARIZERS.items():
        extra = {}
        if spec is not None:
            kind, settings = spec
            if kind == "DriftlessPriorPreservation":
                settings = dict(clip=model.out(1), class_prompt=p["class_prompt"], class_latents=class_images.out(1))
            extra["regularizer"] = w.node(kind, 2, **settings)
        slug = label.replace(" ", "_")
        trained[label] = w.node("DriftlessTrainLoRA", 3, title=f"Train LoRA ({label})", model=model, training_data=data,
                                steps=p["train_steps"], learning_rate=p["learning_rate"], rank=p["rank"],
                                alpha=float(p["rank"]), run_name=f"{p['folder']}_compare/{slug}", checkpoint_every=0,
                                resume_from="", **extra)
    subject = w.node("CLIPTextEncode", 4, title="Subject prompt", clip=model.out(1), text=p["prompt"])
    prior = w.node("CLIPTextEncode", 4, title="Prior prompt (no trigger word)", clip=model.out(1), text=p["prior_prompt"])
    null = w.node("CLIPTextEncode", 4, title="Null prompt", clip=model.out(1), text="")
    latent = w.node("EmptyLatentImage", 4, width=p["size"], height=p["size"], batch_size=p["compare_batch"])

    def sample(source, prompt, title):
        latents = w.node("KSampler", 5, title=title, model=source, positive=prompt, negative=null, latent_image=latent,
                         seed=42, steps=p["sample_steps"], cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
        return w.node("VAEDecode", 6, samples=latents, vae=model.out(2))

    def row(images):
        out = images[0]
        for image in images[1:]:
            out = w.node("ImageStitch", 7, image1=out, image2=image, direction="right", match_image_size=True,
                         spacing_width=4, spacing_color="white")
        return out

    subject_images = {label: sample(t.out(0), subject, f"Subject ({label})") for label, t in trained.items()}
    subject_row = row(list(subject_images.values()))
    prior_base = sample(model.out(0), prior, "Prior (base model)")
    prior_images = {label: sample(t.out(0), prior, f"Prior ({label})") for label, t in trained.items()}
    prior_row = row([prior_base, *prior_images.values()])
    labels = ", ".join(trained)
    w.node("SaveImage", 8, title=f"Subject: {labels}", images=subject_row, filename_prefix=f"{p['folder']}_compare/subject")
    w.node("SaveImage", 8, title=f"Prior: base, {labels}", images=prior_row, filename_prefix=f"{p['folder']}_compare/prior")
    # the metrics table: a personalization and a drift node per method, side by side
    for label in trained:
        slug = label.replace(" ", "_")
        w.align(9, 11)
        w.node("DriftlessPersonalizationMetrics", 9, title=f"Metrics ({label})", generated_images=subject_images[label],
               reference_images=batch, prompts=p["prompt"], identifier="sks", class_noun=p["class_noun"], **backbones(p),
               filename_prefix=f"{p['folder']}_compare/metrics/{slug}")
        w.node("DriftlessDriftMetrics", 11, title=f"Drift ({label})", base_images=prior_base,
               personalized_images=prior_images[label], **backbones(p),
               filename_prefix=f"{p['folder']}_compare/drift/{slug}", prompts=p["prior_prompt"], identifier="sks")
    return w.to_json()


CONTINUAL_NOTE = """## Continual personalization: two concepts in sequence{suffix}

One LoRA learns **{first}** and then **{second}**, keeping no images of the first concept while learning
the second (Jha et al., ICLR 2025):
1. **Driftless Concept Pool** starts an empty EWC-DC pool for the base MODEL
2. concept 1: **Continual Regularizer** (empty pool: a fresh LoRA, no penalty) -> **Train LoRA** ->
   **Add Concept** (stores the LoRA and its diffusion-classifier Fisher)
3. concept 2: the same against the pool from step 2: the run starts from concept 1's LoRA and the EWC
   penalty holds the parameters concept 1 relies on
4. **Save Concept Pool** writes `models/driftless/concept_pools/{folder}_concepts.safetensors`
5. **Retention Report** scores both concepts on held-out photos (the third of each, never trained on or stored):
   diffusion-classifier accuracy and denoising loss with the base model, right after each concept, and now
6. samples of concept 1 after concept 1, concept 1 after concept 2 (did it survive?) and concept 2

To compare with the baselines, set the pool's `method` to `sequential LoRA` or `LoRA-EWC` and run again.

Headless: `{headless}`."""

CONTINUAL = {
    "real": dict(first=("sks dog", "a photo of sks dog", [f"my_subject_{i}.png" for i in (1, 2, 3)]),
                 second=("zwx backpack", "a photo of zwx backpack", [f"my_second_subject_{i}.png" for i in (1, 2, 3)]),
                 fisher_draws=50, draws=8),
    "tiny": dict(first=("sks cat", "a photo of sks cat", [f"driftless_demo/sks_cat_{i}.png" for i in (1, 2, 3)]),
                 second=("zwx cup", "a photo of zwx cup", [f"driftless_demo/zwx_cup_{i}.png" for i in (1, 2, 3)]),
                 fisher_draws=4, draws=2, train_steps=15, sample_steps=6),
}


def continual(info: dict, profile: str = "tiny") -> dict:
    c = CONTINUAL[profile]
    (first, first_prompt, first_photos), (second, second_prompt, second_photos) = c["first"], c["second"]
    note = CONTINUAL_NOTE.replace("{first}", first).replace("{second}", second)
    if profile == "real":
        note += ("\n\n**Second subject**: put 3 photos of it in `input/` as `my_second_subject_1.png` … `_3.png`. "
                 "The third photo of each subject is held out for the retention report, not trained on.")
    p, w, model = start(info, profile, "continual", note, height=560, photos=3,
                        photos_text="3 photos of your subject in `input/` as `my_subject_1.png` … `my_subject_3.png`.")
    p = {**p, **{k: c[k] for k in ("train_steps", "sample_steps") if k in c}}

    def training_data(column, names, caption):
        images = photos(w, p, column, files="\n".join(names))
        return w.node("DriftlessTrainingData", column, clip=model.out(1), captions=caption, images=images, vae=model.out(2))

    pool = w.node("DriftlessConceptPool", 1, model=model, method="EWC-DC", pretrained_prompt="a photo", score_temperature=1.0)
    trained = []
    for i, (trigger, prompt, names) in enumerate(((first, first_prompt, first_photos), (second, second_prompt, second_photos))):
        column = 1 + 2 * i
        data = training_data(column, names[:2], prompt)
        regularizer = w.node("DriftlessContinualRegularizer", column + 1, title=f"Continual Regularizer ({trigger})", pool=pool,
                             clip=model.out(1))
        train = w.node("DriftlessTrainLoRA", column + 1, title=f"Train LoRA ({trigger})", model=model, training_data=data,
                       steps=p["train_steps"], learning_rate=p["learning_rate"], rank=p["rank"], alpha=float(p["rank"]),
                       run_name=f"{p['folder']}_continual/{trigger.replace(' ', '_')}", checkpoint_every=0, resume_from="",
                       regularizer=regularizer)
        pool = w.node("DriftlessAddConcept", column + 1, title=f"Add Concept ({trigger})", pool=pool, model=model,
                      lora=train.out(1), training_data=data, clip=model.out(1), trigger=trigger, prompt=prompt,
                      fisher_draws=c["fisher_draws"], fisher_decay=0.9, seed=0)
        trained.append(train)
    w.node("DriftlessSaveConceptPool", 5, pool=pool, filename=f"{p['folder']}_concepts", overwrite=True)
    held_out = photos(w, p, 5, files="\n".join(names[2] for names in (first_photos, second_photos)),
                      title="Held-out photos (the third of each subject)")
    evaluation = w.node("DriftlessTrainingData", 5, title="Held-out photos (evaluation only)", clip=model.out(1),
                        captions=f"{first_prompt}\n{second_prompt}", images=held_out, vae=model.out(2))
    w.node("DriftlessRetentionReport", 6, pool=pool, model=model, clip=model.out(1), evaluation_data=evaluation,
           draws=c["draws"], seed=0, all_stages=True)
    null = w.node("CLIPTextEncode", 6, title="Null prompt", clip=model.out(1), text="")
    latent = w.node("EmptyLatentImage", 6, width=p["size"], height=p["size"], batch_size=1)
    images = []
    for source, prompt, title in ((trained[0], first_prompt, f"{first} after concept 1"),
                                  (trained[1], first_prompt, f"{first} after concept 2"),
                                  (trained[1], second_prompt, f"{second} after concept 2")):
        text = w.node("CLIPTextEncode", 7, title=f"Prompt ({title})", clip=model.out(1), text=f"{prompt} on a beach")
        latents = w.node("KSampler", 7, title=f"Sample ({title})", model=source.out(0), positive=text, negative=null,
                         latent_image=latent, seed=42, steps=p["sample_steps"], cfg=5.0, sampler_name="euler",
                         scheduler="normal", denoise=1.0)
        images.append(w.node("VAEDecode", 8, samples=latents, vae=model.out(2)))
    row = images[0]
    for image in images[1:]:
        row = w.node("ImageStitch", 8, image1=row, image2=image, direction="right", match_image_size=True,
                     spacing_width=4, spacing_color="white")
    w.node("SaveImage", 9, title=f"{first} after 1, {first} after 2, {second} after 2", images=row,
           filename_prefix=f"{p['folder']}_continual/samples")
    return w.to_json()


SHAPES_NOTE = """## Driftless demo: personalize a small pretrained model on a CPU

**Driftless Pretrained Shapes Model** is a small text-to-image model the pack pretrained itself and ships (the
drift benchmark's model: circles, squares and triangles in four colours on three backgrounds, 32x32). Its weights
load in a second; nothing is downloaded or pretrained.

1. four pictures of a subject it has never seen (an orange cross), captioned `a sks on a white background`
   -> **Driftless Training Data** -> **Driftless Train LoRA** (300 steps, ~20 s on a CPU) -> **Driftless Save LoRA**
2. the same seeds sampled with the base and the personalized MODEL: the subject prompt (also with
   personalization guidance, s = 0.3), a new context (`a blue sks on a black background`) and a prior prompt
   without the trigger word (`a green square on a black background`): each saved as base | personalized, 4x enlarged
3. **Driftless Shapes Scores**: the benchmark's classifier scores each pair: subject fidelity, whether the
   prompted shape and colour were drawn, and how far the personalized samples moved from the base model's
   (the drift). Each writes a JSON report into `output/driftless_shapes/` and shows its table.

Headless: `./driftless demo` (this workflow). No weights are downloaded: the pictures come from the
benchmark's generator (the headless runner writes them to `input/driftless_demo/`; for the web UI run
`./driftless python -m driftless.headless.demo_photos PATH/TO/ComfyUI/input`)."""


def shapes_demo(info: dict) -> dict:
    """The main demo: personalization of the pretrained shapes model, scored by the drift benchmark's classifier."""
    from driftless.shapes import dataset
    from driftless.headless.demo_photos import DEMO_FOLDER, SHAPE_NAMES

    w = UIWorkflow(info)
    w.note(0, SHAPES_NOTE, height=560)
    model = w.node("DriftlessPretrainedShapesModel", 0, preset="full")
    pictures = w.node("DriftlessLoadImages", 1, title="Load the subject's pictures",
                      files="\n".join(f"{DEMO_FOLDER}/{name}" for name in SHAPE_NAMES), size=0)
    caption = dataset.subject_caption()
    data = w.node("DriftlessTrainingData", 2, clip=model.out(1), captions=caption, images=pictures, vae=model.out(2))
    train = w.node("DriftlessTrainLoRA", 2, model=model, training_data=data, steps=300, learning_rate=1e-3, rank=8,
                   alpha=8.0, run_name="driftless_shapes", checkpoint_every=0, resume_from="")
    w.node("DriftlessSaveLoRA", 2, lora=train.out(1), filename="driftless_shapes/lora", overwrite=True)
    w.node("SaveImage", 2, title="Loss curve", images=train.out(3), filename_prefix="driftless_shapes/loss")
    null = w.node("CLIPTextEncode", 3, title="Null prompt", clip=model.out(1), text="")
    latent = w.node("EmptyLatentImage", 3, title="Empty Latent Image (64x64 -> 32x32 pictures: a 4x VAE)",
                    width=64, height=64, batch_size=4)
    sampler = w.node("KSamplerSelect", 3, sampler_name="euler")
    sigmas = w.node("BasicScheduler", 3, model=model, scheduler="normal", steps=12, denoise=1.0)
    noise = w.node("RandomNoise", 3, noise_seed=42)

    def sample(column, source, prompt, title):
        latents = w.node("KSampler", column, title=title, model=source, positive=prompt, negative=null,
                         latent_image=latent, seed=42, steps=12, cfg=4.0, sampler_name="euler", scheduler="normal",
                         denoise=1.0)
        return w.node("VAEDecode", column, samples=latents, vae=model.out(2))

    # one row per prompt: the prompt, base, personalized (and guided) samples, the saved pictures, the scores
    for text, prefix in ((caption, "subject"), (dataset.subject_caption("black", "blue"), "new_context"),
                         (dataset.caption("square", "green", "black"), "prior")):
        label = prefix.replace("_", " ")
        w.align(3, 4, 5, 6, 7, 8)
        prompt = w.node("CLIPTextEncode", 3, title=f"Prompt ({label})", clip=model.out(1), text=text)
        base = sample(4, model.out(0), prompt, f"Sample {label} (base)")
        row = [base, sample(5, train.out(0), prompt, f"Sample {label} (personalized)")]
        if prefix == "subject":
            guider = w.node("DriftlessPersonalizationGuider", 6, title="Personalization guidance (s = 0.3)",
                            model=train.out(0), lora=train.out(1), positive=prompt, null=null, cfg=4.0, weak_strength=0.3,
                            schedule="constant", weak_strength_end=0.3, start=0.0, end=1.0, mode="personalization")
            latents = w.node("SamplerCustomAdvanced", 6, title="Sample subject (personalized, guided)", noise=noise,
                             guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
            row.append(w.node("VAEDecode", 6, samples=latents.out(0), vae=model.out(2)))
        stitched = row[0]
        for image in row[1:]:
            stitched = w.node("ImageStitch", 7, image1=stitched, image2=image, direction="right", match_image_size=True,
                              spacing_width=2, spacing_color="black")
        big = w.node("ImageScaleBy", 7, image=stitched, upscale_method="nearest-exact", scale_by=4.0)
        w.node("SaveImage", 7, title=f"{label}: base | personalized" + (" | guided" if len(row) == 3 else ""),
               images=big, filename_prefix=f"driftless_shapes/{prefix}", preview_height=140)
        for personalized, title in zip(row[1:], (f"Scores: {label}", "Scores: subject, personalization guidance")):
            w.node("DriftlessShapesScores", 8, title=title, subject_images=pictures, base_samples=base,
                   personalized_samples=personalized, prompt=text, preset="full",
                   filename_prefix="driftless_shapes/scores", preview_height=130, node_width=680)
    return w.to_json()


SHAPES_DEMO = "personalize_shapes"  # the main demo; its model needs no weights, so it has no tiny twin
FLUX_PROFILES = {
    "real": dict(PROFILES["real"], train_steps=1000, learning_rate=1e-4, rank=16, sample_steps=28, size=1024,
                 folder="my_subject_flux", dtype="bf16", checkpointing=True),
    "tiny": dict(PROFILES["tiny"], train_steps=20, sample_steps=8, folder="driftless_demo_flux", dtype="fp32",
                 checkpointing=False),
}
FLUX_CHECKPOINT = "flux1-dev-fp8.safetensors"
FLUX_NOTE = """## Driftless on Flux.1 [dev]: photos -> LoRA -> guided samples{suffix}

1. three photos of the subject -> **Driftless Training Data** (VAE + CLIP-L/T5 encode them with the caption)
2. **Driftless Train LoRA** trains the q/k/v/out projections of every double- and single-stream block (bf16,
   gradient checkpointing per block) on a clone of the MODEL, in Flux's own flow-matching parameterization
3. **Driftless Save LoRA** writes `models/loras/{folder}/lora.safetensors` (ComfyUI-native keys)
4. the same seed three ways: the base model and the personalized model as Flux dev is usually sampled (CFG 1,
   distilled guidance 3.5), and the personalized model with **personalization guidance**

Flux dev is guidance-distilled: at CFG 1 no unconditional branch runs, so the guider does its work only with
real CFG on top (here 3.0) and the distilled guidance lowered (FluxGuidance 1.5); the weak model (base + LoRA at
s = 0.3) on the empty prompt is that branch. Each guided step costs two forwards, as CFG does.

Headless: `{headless}`."""
FLUX_REAL_NOTE = """

**Real model**: put the single-file `{ckpt}` (Flux.1 dev with its text encoders and VAE, fp8 weights) in
`models/checkpoints`, and {photos_text}
Replace `sks dog` by your trigger word and class. Fits a 24 GB card at batch 1; on 16 GB lower the rank."""


def flux_demo(info: dict, profile: str = "tiny") -> dict:
    """Train and guide on a guidance-distilled Flux: 16-channel latents, FluxGuidance on the prompt."""
    p, w, model = start(info, profile, "flux_personalize_and_guide", FLUX_NOTE, height=460, photos=3,
                        profiles=FLUX_PROFILES, architecture="flux-dev-tiny", checkpoint=FLUX_CHECKPOINT,
                        real_note=FLUX_REAL_NOTE)
    batch = photos(w, p, 1)
    data = w.node("DriftlessTrainingData", 2, clip=model.out(1), captions=p["caption"], images=batch, vae=model.out(2))
    train = w.node("DriftlessTrainLoRA", 2, model=model, training_data=data, steps=p["train_steps"],
                   learning_rate=p["learning_rate"], rank=p["rank"], alpha=float(p["rank"]), target_layers="attention",
                   training_dtype=p["dtype"], gradient_checkpointing=p["checkpointing"], run_name=p["folder"],
                   checkpoint_every=0 if profile == "tiny" else 250, resume_from="")
    w.node("DriftlessSaveLoRA", 3, lora=train.out(1), filename=f"{p['folder']}/lora", overwrite=True)
    w.node("SaveImage", 3, title="Loss curve", images=train.out(3), filename_prefix=f"{p['folder']}/loss")
    pos = w.node("CLIPTextEncode", 3, title="Prompt", clip=model.out(1), text=p["prompt"])
    null = w.node("CLIPTextEncode", 3, title="Null prompt", clip=model.out(1), text="")
    distilled = w.node("FluxGuidance", 3, title="Distilled guidance 3.5 (CFG 1 sampling)", conditioning=pos, guidance=3.5)
    lowered = w.node("FluxGuidance", 3, title="Distilled guidance 1.5 (under real CFG)", conditioning=pos, guidance=1.5)
    latent = w.node("EmptySD3LatentImage", 3, width=p["size"], height=p["size"], batch_size=1)
    guider = w.node("DriftlessPersonalizationGuider", 4, title="Personalization guidance (s = 0.3, CFG 3)",
                    model=train.out(0), lora=train.out(1), positive=lowered, null=null, cfg=3.0, weak_strength=0.3,
                    schedule="constant", weak_strength_end=0.3, start=0.0, end=1.0, mode="personalization")
    noise = w.node("RandomNoise", 4, noise_seed=42)
    sampler = w.node("KSamplerSelect", 4, sampler_name="euler")
    sigmas = w.node("BasicScheduler", 4, model=model, scheduler="simple", steps=p["sample_steps"], denoise=1.0)
    guided = w.node("SamplerCustomAdvanced", 5, title="Sample (personalized, guided)", noise=noise, guider=guider,
                    sampler=sampler, sigmas=sigmas, latent_image=latent)
    samples = {"guided": guided.out(0)}
    for label, source in (("base", model.out(0)), ("personalized", train.out(0))):
        samples[label] = w.node("KSampler", 5, title=f"Sample ({label}, CFG 1)", model=source, positive=distilled,
                                negative=null, latent_image=latent, seed=42, steps=p["sample_steps"], cfg=1.0,
                                sampler_name="euler", scheduler="simple", denoise=1.0)
    images = {label: w.node("VAEDecode", 6, samples=latents, vae=model.out(2)) for label, latents in samples.items()}
    row = w.node("ImageStitch", 7, image1=images["base"], image2=images["personalized"], direction="right",
                 match_image_size=True, spacing_width=4, spacing_color="white")
    row = w.node("ImageStitch", 7, image1=row, image2=images["guided"], direction="right", match_image_size=True,
                 spacing_width=4, spacing_color="white")
    w.node("SaveImage", 7, title="base | personalized | personalized + guidance", images=row,
           filename_prefix=f"{p['folder']}/samples")
    return w.to_json()


FOLDER_NOTE = """## Driftless: train from a folder of captioned photos{suffix}

1. **Driftless Training Data from Folder** reads `input/{dataset}/`: each photo with its same-named `.txt`
   caption (`photo.png` + `photo.txt`); a photo without one gets the caption template; the trigger word goes
   right before the class noun; a sub-folder named `N_name` repeats its photos N times; `photo_mask.png`
   (white = the subject) weighs the loss there, the rest by `unmasked_weight`. Photos of mixed sizes train
   near their own aspect ratio at about resolution x resolution pixels. **Preview as Text** lists what it read.
2. **Driftless Train LoRA** trains on a clone of the MODEL, batches of one size at a time, with a validation
   image every few steps
3. **Driftless Save LoRA** writes `models/loras/{folder}/folder_lora.safetensors`; the trained MODEL samples
   the prompt through the **Personalization Guider** (s = 0.3)

Headless: `{headless}`."""

FOLDER_TEXT = ("your subject's photos in `input/my_subject/`, any sizes, each with a caption file beside it\n"
               "(`dog1.jpg` + `dog1.txt`: 'a photo of a dog on the grass'; the trigger word is put before 'dog').")


def folder_demo(info: dict, profile: str = "tiny") -> dict:
    note = FOLDER_NOTE.replace("{dataset}", PROFILES[profile]["dataset"])
    p, w, model = start(info, profile, "personalize_from_folder", note, height=380, photos=10, photos_text=FOLDER_TEXT)
    data = w.node("DriftlessFolderData", 1, clip=model.out(1), vae=model.out(2), folder=p["dataset"],
                  trigger_word="sks", class_noun=p["class_noun"], caption_template="a photo of {trigger} {class}",
                  repeats=1, resolution=p["resolution"], aspect_buckets=True, bucket_step=p["bucket_step"],
                  unmasked_weight=0.1)
    w.node("PreviewAny", 1, title="What was read", source=data.out(1))
    train = w.node("DriftlessTrainLoRA", 2, model=model, training_data=data, steps=p["train_steps"],
                   learning_rate=p["learning_rate"], rank=p["rank"], alpha=float(p["rank"]),
                   batch_size=2 if profile == "tiny" else 1, run_name=f"{p['folder']}_folder",
                   checkpoint_every=0 if profile == "tiny" else 100, resume_from="",
                   validation_every=p["train_steps"] // 2, validation_prompt=p["prompt"], validation_seed=0,
                   validation_steps=p["sample_steps"], validation_cfg=5.0, clip=model.out(1), vae=model.out(2))
    w.node("DriftlessSaveLoRA", 3, lora=train.out(1), filename=f"{p['folder']}/folder_lora", overwrite=True)
    w.node("SaveImage", 3, title="Loss curve", images=train.out(3), filename_prefix=f"{p['folder']}/folder_loss")
    w.node("SaveImage", 3, title="Validation images (mid-run, end)", images=train.out(4),
           filename_prefix=f"{p['folder']}/folder_validation")
    pos = w.node("CLIPTextEncode", 4, title="Prompt", clip=model.out(1), text=p["prompt"])
    neg = w.node("CLIPTextEncode", 4, title="Null prompt", clip=model.out(1), text="")
    latent = w.node("EmptyLatentImage", 4, width=p["size"], height=p["size"], batch_size=1)
    sampled = guided_sample(w, p, model, train, pos, neg, latent)
    image = w.node("VAEDecode", 5, samples=sampled.out(0), vae=model.out(2))
    w.node("SaveImage", 6, title="Save (personalized)", images=image, filename_prefix=f"{p['folder']}/folder_sample")
    return w.to_json()


EXAMPLE_BUILDERS = {
    "personalize_and_guide": demo,
    "personalize_from_folder": folder_demo,
    "guidance_grid": guidance_grid,
    "regularizer_comparison": regularizer_comparison,
    "continual": continual,
    "flux_personalize_and_guide": flux_demo,
}


def main() -> None:
    comfy = host.boot(tempfile.mkdtemp(prefix="driftless_examples_"), cpu=True)
    info = comfy.object_info()
    for name, build in EXAMPLE_BUILDERS.items():
        for profile, out in (("real", EXAMPLES / f"{name}.json"), ("tiny", EXAMPLES / "tiny" / f"{name}_tiny.json")):
            out.write_text(json.dumps(build(info, profile), indent=2) + "\n")
            print(f"wrote {out}")
    out = EXAMPLES / f"{SHAPES_DEMO}.json"
    out.write_text(json.dumps(shapes_demo(info), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
