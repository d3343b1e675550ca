"""Where the shapes model's weights come from: shipped with the pack, or pretrained once into the cache.

The "full" preset ships in `weights/` beside this file: the checkpoint in fp16 (12 MB; every score the demo
prints was within 0.001 of the fp32 checkpoint's when measured) and the classifier in fp32 (0.75 MB). Each file's metadata records the
recipe hash (`recipe_hash`: the code of dataset.py, classifier.py and pretrain.py with comments and docstrings
left out, the preset's settings and the model config). Shipped weights whose hash is not the current recipe's
are not used: that preset is then pretrained into ~/.cache/driftless/shapes-<hash>/ like any other, and the
test suite fails until the shipped files are rebuilt with `./driftless bench drift --rebuild-weights`.
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
RECIPE_FILES = ("dataset.py", "classifier.py", "pretrain.py")
# CPU seconds per unit, measured with one torch thread (time.process_time) on the development machine,
# from the full preset's build on a quiet machine (builds under heavy load measured up to ~35% slower rates)
CPU_S = {"classifier_step_64": 0.07, "vae_step_32": 0.23, "encode_picture": 0.0025, "unet_sample": 0.0083}


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
    return all((folder / name).is_file() for name in (pretrain.CHECKPOINT, pretrain.CLASSIFIER, pretrain.REPORT))


def recorded_recipe(folder: pathlib.Path) -> str | None:
    """The recipe hash both weight files of `folder` record, or None if they are missing or disagree."""
    from safetensors import safe_open

    found = set()
    for name in (pretrain.CHECKPOINT, pretrain.CLASSIFIER):
        if not (folder / name).is_file():
            return None
        with safe_open(str(folder / name), framework="pt", device="cpu") as f:
            found.add(json.loads((f.metadata() or {}).get(RECIPE_KEY, "null")))
    return found.pop() if len(found) == 1 else None


def shipped_is_current() -> bool:
    return is_built(SHIPPED) and recorded_recipe(SHIPPED) == recipe_hash(pretrain.PRESETS[SHIPPED_PRESET])


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
    s += CPU_S["vae_step_32"] * settings.vae_steps * settings.vae_batch / 32 + CPU_S["encode_picture"] * settings.pool
    s += CPU_S["unet_sample"] * settings.unet_steps * settings.unet_batch
    return max(1, round(s / 60))


def ship(built: pathlib.Path, target: pathlib.Path = SHIPPED) -> None:
    """Copy a built "full" folder into the shipped folder: the checkpoint's floating-point tensors as fp16, the
    classifier as it is, the report; the recipe hash kept in each file's metadata."""
    from ..lora.storage import load_safetensors, save_safetensors_atomic

    target.mkdir(parents=True, exist_ok=True)
    sd, meta = load_safetensors(built / pretrain.CHECKPOINT)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    save_safetensors_atomic(half, target / pretrain.CHECKPOINT, {"dtype": "fp16"}, raw_metadata=meta)
    sd, meta = load_safetensors(built / pretrain.CLASSIFIER)
    save_safetensors_atomic(sd, target / pretrain.CLASSIFIER, raw_metadata=meta)
    report = json.loads((built / pretrain.REPORT).read_text())
    (target / pretrain.REPORT).write_text(json.dumps(report, indent=2) + "\n")


def load_model(folder: pathlib.Path):
    """(MODEL, CLIP, VAE) from a weights folder, in fp32 whatever the file's dtype."""
    return pretrain.load_checkpoint(pathlib.Path(folder) / pretrain.CHECKPOINT)


def load_classifier(folder: pathlib.Path):
    from ..lora.storage import load_safetensors
    from . import classifier

    return classifier.load({k: v.float() for k, v in load_safetensors(pathlib.Path(folder) / pretrain.CLASSIFIER)[0].items()})

