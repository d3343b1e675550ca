"""One subject under one training method: train the LoRA, sample the prompts under each guidance, score them.

Files, under OUT/<method>/<subject>/ (every one written atomically: a temporary file, then a rename):

  lora.safetensors              the LoRA (ComfyUI keys; its metadata records the settings it was trained with)
  <guidance>/sampling.json      the sampling settings, written before the first image
  <guidance>/images/PP_I.png    image I of prompt PP
  <guidance>/result.json        the scores and everything that produced them, written last

Resuming: a subject whose result.json matches the current settings is skipped (nothing is loaded or run).
Otherwise each stage redoes only what is missing: a LoRA file with the same training settings is reused (a
training cut short leaves no file and starts again from step 0); prompts whose images are all on disk are not
sampled again; scores are recomputed from the image files. Files made with other settings are never mixed
with new ones: the run stops and says which settings differ. If the LoRA had to be trained again, images of
the old one are deleted and sampled anew.
"""

import json
import pathlib
import shutil
import time

from .dataset import DreamBenchError, Subject

LORA_FILE, SAMPLING_FILE, RESULT_FILE, IMAGES = "lora.safetensors", "sampling.json", "result.json", "images"
FORMAT = "driftless.dreambench.subject.v1"
METADATA_KEY = "dreambench"


def normalized(value):
    """As JSON stores it (tuples become lists), so settings compare equal across a save and a load."""
    return json.loads(json.dumps(value))


def differences(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {json.dumps(old)[:60]} -> {json.dumps(new)[:60]}"]


def conflict(what: pathlib.Path, folder: pathlib.Path, old, new) -> DreamBenchError:
    diff = differences(old, new)
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    return DreamBenchError(f"{what} was made with other settings ({shown}). Use another --out, or delete {folder} "
                           "to redo this subject with the new settings")


class SubjectRun:
    def __init__(self, bench, subject: Subject, method: str):
        self.bench, self.subject, self.method = bench, subject, method
        self.folder = bench.out / method / subject.name
        self.log = bench.log
        self.label = f"{subject.name} ({subject.class_noun}, {subject.kind}) / {method}"
        self.timings = {}

    # --- settings that decide each stage's files ---------------------------------------------------------

    def training_settings(self) -> dict:
        o = self.bench.options
        return normalized({
            "checkpoint": self.bench.checkpoint_identity,
            "subject": self.subject.name, "class": self.subject.class_noun, "photos": self.subject.photo_digest(),
            "caption": self.caption(), "resolution": self.bench.resolution, "regularizer": self.method,
            "class_images": ({"count": o.class_images, "sampler": o.sampler, "scheduler": o.scheduler,
                              "steps": o.sample_steps, "cfg": o.cfg}
                             if "prior" in self.bench.method_parts[self.method] else None),
            "training": self.bench.train_config.as_dict(),
        })

    def sampling_settings(self, guidance: str) -> dict:
        o = self.bench.options
        return normalized({
            "guidance": guidance, "cfg": o.cfg, "weak_strength": o.weak_strength if guidance == "personalization" else None,
            "sampler": o.sampler, "scheduler": o.scheduler, "steps": o.sample_steps, "seed": o.seed,
            "resolution": self.bench.resolution, "images_per_prompt": o.images_per_prompt, "prompts": self.prompts(),
        })

    def metric_settings(self) -> dict:
        return normalized({"clip": self.bench.clip.describe(), "dino": self.bench.dino.describe(),
                           "identifier": self.bench.options.identifier, "class_noun": self.subject.class_noun})

    def caption(self) -> str:
        return self.bench.options.caption.format(self.bench.options.identifier, self.subject.class_noun)

    def prompts(self) -> list[str]:
        return self.subject.prompts(self.bench.options.identifier, self.bench.options.prompts_limit)

    # --- the run -----------------------------------------------------------------------------------------

    def completed(self, guidance: str) -> dict | None:
        """The stored result when it matches the current settings; None when it is missing or only its scores are
        stale; an error when it was made with other training or sampling settings."""
        path = self.folder / guidance / RESULT_FILE
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        stored = result.get("settings", {})
        sampling = {k: v for k, v in stored.get("sampling", {}).items() if k != "lora"}
        if stored.get("training") != self.training_settings() or sampling != self.sampling_settings(guidance):
            raise conflict(path, self.folder, {"training": stored.get("training"), "sampling": sampling},
                           {"training": self.training_settings(), "sampling": self.sampling_settings(guidance)})
        return result if stored.get("metrics") == self.metric_settings() else None

    def run(self) -> list[dict]:
        done = {g: self.completed(g) for g in self.bench.options.guidance}
        if all(done.values()):
            self.log(f"[dreambench] {self.label}: complete, skipped ({self.folder})")
            return list(done.values())
        lora = self.lora()
        results = []
        for guidance, result in done.items():
            if result is None:
                images = self.sample(lora, guidance)
                result = self.score(guidance, images, lora)
            results.append(result)
        return results

    def lora(self):
        from ...lora.files import load_lora

        path = self.folder / LORA_FILE
        if path.is_file():
            lora = load_lora(path)
            if lora.metadata.get(METADATA_KEY) != self.training_settings():
                raise conflict(path, self.folder, lora.metadata.get(METADATA_KEY), self.training_settings())
            self.log(f"[dreambench] {self.label}: LoRA found, not retrained ({path})")
            return lora
        self.train(path)
        return load_lora(path)  # sampled from the file, so a resumed run samples exactly what a fresh one did

    def train(self, path: pathlib.Path) -> None:
        from ...trainers import loop
        from ...trainers.data import TrainingData
        from ...lora.files import LoraWeights, lora_metadata, save_lora
        from .dataset import load_photos
        from .methods import build_regularizers

        bench, started = self.bench, time.perf_counter()
        photos = load_photos(self.subject.photos, bench.resolution)
        caption = self.caption()
        latents = bench.vae.encode(photos)
        cond = bench.sampler.encode(caption)
        data = TrainingData(latents.clone(), [cond] * len(photos), bench.sampler.null, [caption] * len(photos))
        regularizers = build_regularizers(bench.method_parts[self.method], prior=self.class_images)
        config = bench.train_config
        self.log(f"[dreambench] {self.label}: training {config.steps} steps on {len(photos)} photos, caption '{caption}'")
        result = loop.train_lora(bench.model, data, config, regularizers, on_step=bench.progress(self.label))
        meta = lora_metadata(config, result.base_fingerprint, result.steps_done, data.captions, regularizers, result.adapter)
        save_lora(LoraWeights(result.adapter.lora_state_dict(), meta), self.folder, LORA_FILE,
                  extra_metadata={METADATA_KEY: self.training_settings()})
        unload(result.model)
        self.timings["train_s"] = round(time.perf_counter() - started, 2)
        self.log(f"[dreambench] {self.label}: trained in {self.timings['train_s']:.1f} s, final loss "
                 f"{result.losses[-1]:.4f}; LoRA {path}")

    def class_images(self):
        """(latents, conditioning, prompt) of the class images prior preservation trains on: sampled by the base
        model (the Class Images node's code) with the run's sampler, scheduler, steps and cfg, cached in
        OUT/class_images/ and shared by the subjects of a class."""
        from ...metrics.prompts import neutralize
        from ...trainers.class_images import generate_class_latents

        bench = self.bench
        prompt = neutralize(self.caption(), [bench.options.identifier], self.subject.class_noun)
        positive = bench.sampler.encode(prompt)
        latents, cached = generate_class_latents(
            bench.model, positive, bench.sampler.null, count=bench.options.class_images, seed=bench.options.seed,
            width=bench.resolution, height=bench.resolution, steps=bench.options.sample_steps, cfg=bench.options.cfg,
            sampler=bench.options.sampler, scheduler=bench.options.scheduler,
            cache_folder=bench.out / "class_images", base_fingerprint=bench.checkpoint_identity["unet_fingerprint"],
            prompt=prompt)
        self.log(f"[dreambench] {self.label}: {len(latents)} class images of '{prompt}' "
                 f"({'from the cache' if cached else 'sampled by the base model'})")
        return latents, positive, prompt

    def sample(self, lora, guidance: str) -> list[pathlib.Path]:
        from ...metrics.report import write_json_atomic
        from ...lora.fingerprint import lora_fingerprint
        from .sampling import save_png_atomic, seeds_for

        bench, o = self.bench, self.bench.options
        folder, record = self.folder / guidance / IMAGES, self.folder / guidance / SAMPLING_FILE
        settings = {**self.sampling_settings(guidance), "lora": lora_fingerprint(lora)}
        old = json.loads(record.read_text()) if record.is_file() else None
        if old is not None and {k: v for k, v in old.items() if k != "lora"} != self.sampling_settings(guidance):
            raise conflict(record, self.folder, old, settings)
        if old is not None and old.get("lora") != settings["lora"]:
            self.log(f"[dreambench] {self.label}: the LoRA was trained again; its old {guidance} images are deleted")
            shutil.rmtree(folder, ignore_errors=True)
        if old != settings:
            write_json_atomic(settings, record)
        prompts, k = self.prompts(), o.images_per_prompt
        paths = [[folder / f"{p:02d}_{i}.png" for i in range(k)] for p in range(len(prompts))]
        todo = [p for p in range(len(prompts)) if not all(path.is_file() for path in paths[p])]
        started, guider = time.perf_counter(), None
        for n, p in enumerate(todo, 1):
            if guider is None:
                guider = bench.sampler.guider(lora, guidance, o.cfg, o.weak_strength)
            images = bench.sampler.images(guider, prompts[p], seeds_for(o.seed, p, k))
            for image, path in zip(images, paths[p]):
                save_png_atomic(image, path)
            rate = n / (time.perf_counter() - started)
            self.log(f"[dreambench] {self.label} / {guidance}: prompt {p + 1}/{len(prompts)} sampled ({k} images; "
                     f"{rate:.2f} prompts/s, ETA {(len(todo) - n) / rate:.0f} s)")
        if guider is not None:
            unload(guider.model_patcher)
        if len(todo) < len(prompts):
            self.log(f"[dreambench] {self.label} / {guidance}: {len(prompts) - len(todo)} of {len(prompts)} prompts "
                     "already sampled, kept")
        self.timings[f"sample_{guidance}_s"] = round(time.perf_counter() - started, 2)
        return [path for row in paths for path in row]

    def score(self, guidance: str, images: list[pathlib.Path], lora) -> dict:
        from ...metrics.evaluate import personalization_metrics
        from ...metrics.report import build_report, write_json_atomic
        from ...lora.fingerprint import lora_fingerprint
        from .dataset import load_photos
        from .sampling import load_png_batch

        bench, started = self.bench, time.perf_counter()
        bench.backbones_on_device()
        generated = load_png_batch(images)
        reference = load_photos(self.subject.photos, bench.resolution)
        prompts = self.prompts()
        result = personalization_metrics(generated, reference, prompts, clip=bench.clip, dino=bench.dino,
                                         identifiers=[bench.options.identifier], class_noun=self.subject.class_noun)
        counts = {"prompts": len(prompts), "images_per_prompt": bench.options.images_per_prompt,
                  "generated": len(images), "reference": len(self.subject.photos)}
        report = build_report("personalization", result, counts, {"identifiers": [bench.options.identifier],
                                                                    "class_noun": self.subject.class_noun})
        self.timings[f"metrics_{guidance}_s"] = round(time.perf_counter() - started, 2)
        out = {
            "format": FORMAT, "subject": self.subject.name, "class": self.subject.class_noun, "kind": self.subject.kind,
            "regularizer": self.method, "guidance": guidance,
            "scores": {key: report["metrics"][key]["mean"] for key in ("dino", "clip_i", "clip_t")},
            "counts": counts, "prompts": prompts,
            "images": [str(p.relative_to(self.folder / guidance)) for p in images],
            "reference_photos": [str(p) for p in self.subject.photos],
            "lora": LORA_FILE, "metrics": report,
            "settings": {"training": self.training_settings(),
                         "sampling": {**self.sampling_settings(guidance), "lora": lora_fingerprint(lora)},
                         "metrics": self.metric_settings()},
            "timings": dict(self.timings),
        }
        write_json_atomic(out, self.folder / guidance / RESULT_FILE)
        s = out["scores"]
        self.log(f"[dreambench] {self.label} / {guidance}: DINO {s['dino']:.4f}  CLIP-I {s['clip_i']:.4f}  "
                 f"CLIP-T {s['clip_t']:.4f}  ({len(images)} images)")
        return out


def unload(patcher) -> None:
    """Take a clone of the base model that is no longer needed (the training clone, a guider's LoRA-merged clone) off
    ComfyUI's list of loaded models, restoring the shared weights. Left there, it would stay listed after it is
    garbage-collected (the base model it shares outlives it) and make every later load run a full garbage collection."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
