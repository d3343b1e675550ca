"""Where the shapes model's weights come from: shipped with the pack, or pretrained once into the cache.

The "full" preset ships in `weights/` beside this file as what was trained: the UNet (3.4 MB) and the VAE (1.8 MB) in
fp16, each a file of its own, and the classifier in fp32 (0.75 MB); every score the demo prints was within 0.001 of
the fp32 checkpoint's when measured. The text encoder is not shipped: the recipe never trains it (pretrain.py), so
it is rebuilt from the recipe's seed, and the UNet file records its fingerprint, checked at load. Each file records
the recipe hash (`recipe_hash`: the code of dataset.py, classifier.py and pretrain.py with comments and docstrings
left out, the preset's settings and the model config). Shipped weights whose hash is not the current recipe's are
not used: that preset is then pretrained into ~/.cache/driftless/shapes-<hash>/ like any other (one checkpoint
file there), and the test suite fails until the shipped files are rebuilt with `./driftless bench drift
--rebuild-weights`.
"""

import ast
import dataclasses
import hashlib
import json
import os
import pathlib

from . import pretrain

SHIPPED = pathlib.Path(__file__).resolve().parent / "weights"
SHIPPED_PRESET = "full"
RECIPE_KEY = "recipe"
TEXT_ENCODER_KEY = "text_encoder"  # the seeded text encoder's fingerprint, in the shipped UNet file
SHIPPED_UNET, SHIPPED_VAE = "unet.safetensors", "vae.safetensors"
RECIPE_FILES = ("dataset.py", "classifier.py", "pretrain.py")
# CPU seconds per unit with one torch thread (time.process_time) on the development machine: the VAE per 32x32
# picture and the classifier per step of 64 (with its VAE round trips) from the December 2026 recipe's runs, encoding
# and the UNet per sample from the builds before it (builds under heavy load measured up to ~35% slower rates)
CPU_S = {"classifier_step_64": 0.15, "vae_picture_32px": 0.0079, "encode_picture": 0.0025, "unet_sample": 0.0083}


def _code(path: pathlib.Path) -> str:
    """The module's syntax tree without docstrings: what it computes, not how it is commented."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def recipe_hash(settings: pretrain.Settings) -> str:
    """Hash of what makes the weights: the recipe's code, the settings and the drift-bench model config."""
    from ..tinymodels.configs import CONFIGS

    h = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    h.update(repr(CONFIGS[pretrain.ARCHITECTURE]).encode())
    for name in RECIPE_FILES:
        h.update(_code(SHIPPED.parent / name).encode())
    return h.hexdigest()[:16]


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DRIFTLESS_CACHE", pathlib.Path.home() / ".cache" / "driftless"))


def cache_dir(settings: pretrain.Settings) -> pathlib.Path:
    return cache_root() / f"shapes-{recipe_hash(settings)}"


def is_built(folder: pathlib.Path) -> bool:
    """A cache folder with its checkpoint, classifier and report (the report is written last)."""
    return all((folder / name).is_file() for name in (pretrain.CHECKPOINT, pretrain.CLASSIFIER, pretrain.REPORT))


def is_shipped_layout(folder: pathlib.Path) -> bool:
    return all((folder / name).is_file() for name in (SHIPPED_UNET, SHIPPED_VAE, pretrain.CLASSIFIER, pretrain.REPORT))


def _weight_files(folder: pathlib.Path) -> tuple[str, ...]:
    if is_shipped_layout(folder):
        return SHIPPED_UNET, SHIPPED_VAE, pretrain.CLASSIFIER
    return pretrain.CHECKPOINT, pretrain.CLASSIFIER


def recorded_recipe(folder: pathlib.Path) -> str | None:
    """The recipe hash every weight file of `folder` records, or None if they are missing or disagree."""
    from safetensors import safe_open

    found = set()
    for name in _weight_files(folder):
        if not (folder / name).is_file():
            return None
        with safe_open(str(folder / name), framework="pt", device="cpu") as f:
            found.add(json.loads((f.metadata() or {}).get(RECIPE_KEY, "null")))
    return found.pop() if len(found) == 1 else None


def shipped_is_current() -> bool:
    return is_shipped_layout(SHIPPED) and recorded_recipe(SHIPPED) == recipe_hash(pretrain.PRESETS[SHIPPED_PRESET])


def folder_for(preset: str) -> pathlib.Path | None:
    """The folder holding `preset`'s weights if they exist (shipped and current, or built in the cache), else None."""
    settings = pretrain.PRESETS[preset]
    if preset == SHIPPED_PRESET and shipped_is_current():
        return SHIPPED
    folder = cache_dir(settings)
    return folder if is_built(folder) else None


def ensure(preset: str, log=print, progress=None) -> pathlib.Path:
    """The folder of `preset`'s weights, pretrained into the cache first when none exist (the report is written
    last: present = complete). `progress(done, total)` is called as a build advances (pretrain.build)."""
    folder = folder_for(preset)
    if folder is not None:
        return folder
    settings = pretrain.PRESETS[preset]
    folder = cache_dir(settings)
    if preset == SHIPPED_PRESET:
        log(f"[shapes] the shipped weights in {SHIPPED} were not made by the current recipe: pretraining instead")
    log(f"[shapes] pretraining the shapes model ({preset}) into {folder} (once per machine; about "
        f"{estimate_minutes(settings)} CPU-minutes)")
    build(folder, settings, log, progress)
    return folder


def build(folder: pathlib.Path, settings: pretrain.Settings, log=print, progress=None) -> dict:
    """Pretrain into `folder`, each weight file recording the recipe hash."""
    report = pretrain.build(folder, settings, log, progress, metadata={RECIPE_KEY: recipe_hash(settings)})
    return report


def estimate_minutes(settings: pretrain.Settings) -> int:
    """CPU minutes of the whole pretraining at the measured rates (CPU_S): an upper bound for 2 idle cores."""
    s = CPU_S["classifier_step_64"] * settings.classifier_steps * settings.classifier_batch / 64
    pictures = settings.vae_steps * settings.vae_batch * (min(settings.vae_crop, 32) / 32) ** 2
    s += CPU_S["vae_picture_32px"] * pictures + CPU_S["encode_picture"] * settings.pool
    s += CPU_S["unet_sample"] * settings.unet_steps * settings.unet_batch
    return max(1, round(s / 60))


def ship(built: pathlib.Path, target: pathlib.Path = SHIPPED) -> None:
    """Copy a built "full" folder into the shipped folder: the UNet and the VAE as fp16 files of their own, the
    classifier as it is, the report; the recipe hash in each file's metadata. Refuses a build whose text encoder is
    not the seeded one the loader rebuilds."""
    from ..lora.fingerprint import lora_fingerprint
    from ..lora.storage import load_safetensors, save_safetensors_atomic

    model, clip, vae = pretrain.load_checkpoint(built / pretrain.CHECKPOINT)
    text_encoder = lora_fingerprint(clip.cond_stage_model.state_dict())
    if text_encoder != _seeded_text_encoder_fingerprint():
        raise ValueError(f"{built}: its text encoder is not the recipe's seeded one, so it cannot be rebuilt at load")
    recipe = {RECIPE_KEY: json.loads(load_safetensors(built / pretrain.CLASSIFIER)[1][RECIPE_KEY])}
    half = lambda sd: {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}  # noqa: E731
    target.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(half(model.model.diffusion_model.state_dict()), target / SHIPPED_UNET,
                            {**recipe, TEXT_ENCODER_KEY: text_encoder, "dtype": "fp16"})
    save_safetensors_atomic(half(vae.first_stage_model.state_dict()), target / SHIPPED_VAE, {**recipe, "dtype": "fp16"})
    sd, meta = load_safetensors(built / pretrain.CLASSIFIER)
    save_safetensors_atomic(sd, target / pretrain.CLASSIFIER, raw_metadata=meta)
    (target / pretrain.REPORT).write_text((built / pretrain.REPORT).read_text())
    (target / pretrain.CHECKPOINT).unlink(missing_ok=True)  # the one-file layout of earlier builds


def _seeded_model():
    from ..tinymodels.build import build_tiny_model

    return build_tiny_model(pretrain.ARCHITECTURE, pretrain.PRESETS[SHIPPED_PRESET].seed)


def _seeded_text_encoder_fingerprint() -> str:
    from ..lora.fingerprint import lora_fingerprint

    return lora_fingerprint(_seeded_model()[1].cond_stage_model.state_dict())


def load_model(folder: pathlib.Path):
    """(MODEL, CLIP, VAE) from a weights folder, in fp32 whatever the files' dtype: a cache folder's checkpoint, or
    the shipped UNet and VAE on the seeded model (whose text encoder must be the one the UNet was trained with)."""
    folder = pathlib.Path(folder)
    if not is_shipped_layout(folder):
        return pretrain.load_checkpoint(folder / pretrain.CHECKPOINT)
    from ..lora.fingerprint import lora_fingerprint
    from ..lora.storage import load_safetensors

    model, clip, vae = _seeded_model()
    unet, meta = load_safetensors(folder / SHIPPED_UNET)
    if json.loads(meta.get(TEXT_ENCODER_KEY, "null")) != lora_fingerprint(clip.cond_stage_model.state_dict()):
        raise ValueError(f"{folder / SHIPPED_UNET} was trained with another text encoder than this torch builds from the "
                         "recipe's seed: rebuild the weights with ./driftless bench drift --rebuild-weights")
    model.model.diffusion_model.load_state_dict(unet, strict=True)  # copied into the fp32 parameters
    vae.first_stage_model.load_state_dict(load_safetensors(folder / SHIPPED_VAE)[0], strict=True)
    model.cached_patcher_init = (load_diffusion_model, (folder,))
    return model, clip, vae


def load_diffusion_model(folder: pathlib.Path, disable_dynamic: bool = False):
    """The MODEL of `load_model(folder)`: how ComfyUI 0.33's deep clones (its TrainLoraNode, multi-GPU) build it
    again, as they do a checkpoint's (`cached_patcher_init`). They take its module, not its patcher class."""
    return load_model(folder)[0]


def load_classifier(folder: pathlib.Path):
    from ..lora.storage import load_safetensors
    from . import classifier

    return classifier.load({k: v.float() for k, v in load_safetensors(pathlib.Path(folder) / pretrain.CLASSIFIER)[0].items()})
