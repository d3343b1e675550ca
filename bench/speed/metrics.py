"""All three DreamBench metrics (CLIP-T, CLIP-I, DINO) on 16 generated and 4 reference images: the metrics
module against straightforward per-image loops through the transformers processors, same backbones, interleaved.

The loops are what one writes with transformers alone: for each image, AutoProcessor / AutoImageProcessor on a
PIL image, then the model on that one image; reference embeddings once per evaluation. "One metric at a time"
runs each metric as its own loop (CLIP-T as torchmetrics' CLIPScore does it, processor(text, images) and both
towers per image; then CLIP-I; then DINO), so each generated image goes through the CLIP image tower twice;
"CLIP image embedding shared" computes it once for CLIP-I and CLIP-T (the stronger baseline). Ours: 8-bit
quantization once per batch, tensor preprocessing of the whole batch on the model's device, one batched forward
per backbone, each distinct prompt encoded once; "cold" embeds the references too, "warm" finds them in the
embedding cache (a second generated batch scored against the same reference set).
"""

import pathlib
import tempfile

import numpy as np
import torch

from ..common import clock, spread

SIDES = ("per-image loop, one metric at a time", "per-image loop, CLIP image embedding shared", "Driftless, cold",
         "Driftless, reference cache warm")
PROMPTS = ["a sks dog in the snow", "a sks dog on the beach", "a photo of sks", "a sks dog with a city behind"]


def images(n: int, size: int = 512, offset: int = 0) -> torch.Tensor:
    """n real photographs (skimage.data) cropped square and resized to size x size, flipped every other one."""
    from PIL import Image
    from skimage import data

    names = ["chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
    out = []
    for i in range(offset, offset + n):
        arr = getattr(data, names[i % len(names)])()
        h, w = arr.shape[:2]
        side = min(h, w)
        crop = arr[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        img = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
        out.append(torch.from_numpy(img[:, ::-1].copy() if (i // len(names)) % 2 else img))
    return torch.stack(out)


def build(folder: pathlib.Path, size: str):
    from ...metrics.backbones import load_backbone
    from ...tinymodels.metrics_backbones import save_clip, save_dino

    save_clip(folder / "clip", seed=0, size=size)
    save_dino(folder / "dino", seed=1, size=size, version=1)
    return load_backbone(folder / "clip"), load_backbone(folder / "dino")


class PerImageLoop:
    """The straightforward transformers path, on the same weights."""

    def __init__(self, folder: pathlib.Path):
        import transformers

        local = dict(local_files_only=True)
        self.clip = transformers.CLIPModel.from_pretrained(str(folder / "clip"), **local).float().eval()
        self.clip_processor = transformers.AutoProcessor.from_pretrained(str(folder / "clip"), **local)
        self.dino = transformers.ViTModel.from_pretrained(str(folder / "dino"), add_pooling_layer=False, **local).float().eval()
        self.dino_processor = transformers.AutoImageProcessor.from_pretrained(str(folder / "dino"), **local)
        self.processor_class = type(self.clip_processor.image_processor).__name__

    def __call__(self, generated: torch.Tensor, reference: torch.Tensor, prompts: list[str], shared: bool = True) -> dict:
        from PIL import Image

        from ...metrics.backbones import features

        pil = lambda t: Image.fromarray((t.numpy() * 255).round().astype(np.uint8))  # noqa: E731
        cos = torch.nn.functional.cosine_similarity
        clip_image = lambda img: features(self.clip.get_image_features(  # noqa: E731
            **self.clip_processor(images=img, return_tensors="pt")))
        with torch.inference_mode():
            ref_clip = torch.cat([clip_image(pil(r)) for r in reference])
            ref_dino = torch.cat([self.dino(**self.dino_processor(images=pil(r), return_tensors="pt")).last_hidden_state[:, 0]
                                  for r in reference])
            clip_t, clip_i, dino = [], [], []
            for image, prompt in zip(generated, prompts):
                img = pil(image)
                inputs = self.clip_processor(text=[prompt], images=img, return_tensors="pt", padding=True)
                image_embed = features(self.clip.get_image_features(pixel_values=inputs["pixel_values"]))
                text_embed = features(self.clip.get_text_features(input_ids=inputs["input_ids"],
                                                                  attention_mask=inputs["attention_mask"]))
                clip_t.append(cos(image_embed, text_embed).item())
                if shared:
                    clip_i.append(cos(image_embed, ref_clip).mean().item())
            if not shared:
                clip_i = [cos(clip_image(pil(image)), ref_clip).mean().item() for image in generated]
            for image in generated:
                d = self.dino(**self.dino_processor(images=pil(image), return_tensors="pt")).last_hidden_state[:, 0]
                dino.append(cos(d, ref_dino).mean().item())
        return {"clip_t": float(np.mean(clip_t)), "clip_i": float(np.mean(clip_i)), "dino": float(np.mean(dino))}


def ours(clip, dino, generated, reference, prompts, warm: bool) -> dict:
    from ...metrics.evaluate import personalization_metrics

    if not warm:
        clip._cache.clear()
        dino._cache.clear()
    result = personalization_metrics(generated, reference, prompts, clip=clip, dino=dino, identifiers=[], class_noun="")
    return {k: s.mean for k, s in result.scores.items()}


def paired_times(repeats: int, size: str = "bench", n_generated: int = 16, n_reference: int = 4) -> dict:
    """Per repeat, each side once in rotated order (warm-up first); seconds per evaluation and ratios to the loop."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="driftless_bench_metrics_"))
    clip, dino = build(folder, size)
    loop = PerImageLoop(folder)
    generated, reference = images(n_generated), images(n_reference, offset=n_generated)
    prompts = [p for p in PROMPTS for _ in range(n_generated // len(PROMPTS))]
    run = {
        SIDES[0]: lambda: loop(generated, reference, prompts, shared=False),
        SIDES[1]: lambda: loop(generated, reference, prompts, shared=True),
        SIDES[2]: lambda: ours(clip, dino, generated, reference, prompts, warm=False),
        SIDES[3]: lambda: ours(clip, dino, generated, reference, prompts, warm=True),
    }
    scores = {name: fn() for name, fn in run.items()}  # warm-up (and the agreement check)
    times = {n: [] for n in SIDES}
    for repeat in range(repeats):
        order = SIDES[repeat % len(SIDES):] + SIDES[: repeat % len(SIDES)]
        for name in order:
            start = clock()
            run[name]()
            times[name].append(clock() - start)
    agreement = max(abs(scores[a][k] - scores[SIDES[2]][k]) for a in SIDES[:2] for k in ("clip_t", "clip_i", "dino"))
    per_metric, shared = times[SIDES[0]], times[SIDES[1]]
    return {
        "sides": {n: {"seconds": spread(times[n]),
                      "speedup_vs_per_metric_loop": spread([b / t for b, t in zip(per_metric, times[n])]),
                      "speedup_vs_shared_loop": spread([b / t for b, t in zip(shared, times[n])])}
                  for n in SIDES},
        "max_abs_difference_of_means": agreement,
        "processor_class": loop.processor_class,
        "backbones": {"clip": clip.describe(), "dino": dino.describe()},
        "description": describe(clip, dino),
    }


def describe(clip, dino) -> str:
    v, t, d = clip.model.config.vision_config, clip.model.config.text_config, dino.model.config
    millions = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return (f"random CLIPModel: vision {v.image_size} px, patch {v.patch_size}, width {v.hidden_size}, {v.num_hidden_layers} "
            f"layers; text width {t.hidden_size}, {t.num_hidden_layers} layers ({millions(clip.model):.1f} M params); "
            f"random DINO ViTModel: {d.image_size} px, patch {d.patch_size}, width {d.hidden_size}, {d.num_hidden_layers} "
            f"layers ({millions(dino.model):.1f} M params); fp32, {next(dino.model.parameters()).device}")
