"""Seeded random CLIP and DINO backbone folders laid out like their Hugging Face repositories, for tests,
benchmarks and trying the metrics nodes without real weights (their scores mean nothing).

Each folder holds what the metrics loader expects from a real download: config.json, model.safetensors,
preprocessor_config.json (the real repositories' processor settings, scaled to the model's image size),
and for CLIP a byte-level BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json). No ComfyUI needed.

Sizes: ``tiny`` (32 px images, width 32, 2 layers: milliseconds); ``bench`` (224 px images and the patch grids
of CLIP ViT-B/32 and DINO ViT-S/16, narrow: widths 256 / 192, 4 layers); ``wide`` (the same with the real
models' widths, 768 / 512 / 384, still 4 layers instead of 12). Heads are 64 wide except in ``tiny``.
"""

import json
import pathlib

import torch

SIZES = {
    "tiny": dict(image=32, clip_patch=8, dino_patch=8, dinov2_patch=8, clip_width=32, text_width=32, dino_width=32,
                 layers=2, head_width=8, projection=16, dinov2_resize=36),
    "bench": dict(image=224, clip_patch=32, dino_patch=16, dinov2_patch=14, clip_width=256, text_width=256,
                  dino_width=192, layers=4, head_width=64, projection=256, dinov2_resize=256),
    "wide": dict(image=224, clip_patch=32, dino_patch=16, dinov2_patch=14, clip_width=768, text_width=512,
                 dino_width=384, layers=4, head_width=64, projection=512, dinov2_resize=256),
}
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
WORDS = ("a", "photo", "of", "the", "in", "on", "dog", "cat", "vase", "with", "snow", "beach", "sks")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def save_tokenizer(folder: pathlib.Path) -> int:
    """A CLIP BPE tokenizer with the byte alphabet and merges for a few prompt words; returns the vocab size."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    merges = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
                if merged not in vocab:
                    vocab.append(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    CLIPTokenizer.from_pretrained(str(folder), model_max_length=77).save_pretrained(str(folder))
    return len(vocab)


def save_clip(folder, seed: int = 0, size: str = "tiny", vision_only: bool = False) -> pathlib.Path:
    """A random CLIPModel (or CLIPVisionModelWithProjection) folder with CLIP's processor settings."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    s, folder = SIZES[size], pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vision = dict(hidden_size=s["clip_width"], intermediate_size=4 * s["clip_width"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["clip_width"] // s["head_width"], image_size=s["image"],
                  patch_size=s["clip_patch"], projection_dim=s["projection"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if vision_only:
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
        else:
            vocab_size = save_tokenizer(folder)
            text = dict(vocab_size=vocab_size, hidden_size=s["text_width"], intermediate_size=4 * s["text_width"],
                        num_hidden_layers=s["layers"], num_attention_heads=s["text_width"] // s["head_width"],
                        max_position_embeddings=77, bos_token_id=vocab_size - 2,
                        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=s["projection"])
            config = CLIPConfig(text_config=CLIPTextConfig(**text).to_dict(), vision_config=CLIPVisionConfig(**vision).to_dict(),
                                projection_dim=s["projection"])
            model = CLIPModel(config)
    model.save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": s["image"]}, crop_size={"height": s["image"], "width": s["image"]}).save_pretrained(str(folder))
    return folder


def save_dino(folder, seed: int = 0, size: str = "tiny", version: int = 1) -> pathlib.Path:
    """A random DINO folder: v1 = ViTModel with facebook/dino-vits16's processor (exact resize, bilinear);
    v2 = Dinov2Model with facebook/dinov2-small's (shortest edge then center crop, bicubic)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    s, folder = SIZES[size], pathlib.Path(folder)
    common = dict(hidden_size=s["dino_width"], intermediate_size=4 * s["dino_width"], num_hidden_layers=s["layers"],
                  num_attention_heads=s["dino_width"] // s["head_width"], image_size=s["image"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if version == 1:
            model = ViTModel(ViTConfig(**common, patch_size=s["dino_patch"]), add_pooling_layer=False)
            processor = ViTImageProcessor(size={"height": s["image"], "width": s["image"]}, resample=2,
                                          image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        else:
            model = Dinov2Model(Dinov2Config(**common, patch_size=s["dinov2_patch"], layerscale_value=1.0))
            processor = BitImageProcessor(size={"shortest_edge": s["dinov2_resize"]}, resample=3, do_center_crop=True,
                                          crop_size={"height": s["image"], "width": s["image"]},
                                          image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
