"""CLIP and DINO backbones from local folders only: transformers, local_files_only=True, safetensors only.

A backbone folder is what a Hugging Face model repository holds (e.g. openai/clip-vit-base-patch32,
facebook/dino-vits16, facebook/dinov2-small), copied to disk by the user:

  CLIP (CLIP-T, CLIP-I)  config.json (model_type "clip"), model.safetensors, preprocessor_config.json,
                         tokenizer.json or vocab.json + merges.txt (tokenizer_config.json optional)
  CLIP vision only       config.json (model_type "clip_vision_model"), model.safetensors,
  (CLIP-I only)          preprocessor_config.json  (a CLIPVisionModelWithProjection)
  DINO (DINO)            config.json (model_type "vit" for DINO v1, "dinov2" or "dinov2_with_registers"),
                         model.safetensors, preprocessor_config.json

Sharded weights (model.safetensors.index.json + shards) load too. Nothing is ever downloaded, and pickled
weights (pytorch_model.bin) are refused. Embeddings:
  CLIP image / text  the projected embeddings (get_image_features / get_text_features; transformers 5 may
                     return a ModelOutput whose pooler_output holds them, transformers 4 a tensor)
  DINO               the CLS token of the last layer, after the final layer norm (last_hidden_state[:, 0])
"""

import hashlib
import json
import logging
import os
import pathlib
from collections import OrderedDict

import torch

from .preprocess import PreprocessSpec, pixel_values, to_8bit

KINDS = {"clip": "clip", "clip_vision_model": "clip_vision", "vit": "dino", "dinov2": "dino",
         "dinov2_with_registers": "dino"}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# parameters a backbone may lack without changing its embeddings (unused by inference)
HARMLESS_MISSING = ("mask_token", "position_ids", "pooler.")


class MissingWeights(FileNotFoundError):
    """A backbone folder is absent or incomplete; the message names the folder and the files expected."""


def expected_files(kind: str) -> str:
    files = "config.json, model.safetensors (or model.safetensors.index.json with its shards), preprocessor_config.json"
    if kind == "clip":
        files += ", and a tokenizer: tokenizer.json, or vocab.json + merges.txt"
    return files


def model_kind(folder: pathlib.Path) -> str | None:
    """'clip', 'clip_vision' or 'dino' from config.json's model_type; None for anything else."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return KINDS.get(config.get("model_type"))


def find_models(roots: list[str | os.PathLike], depth: int = 2) -> dict[str, tuple[pathlib.Path, str]]:
    """{name: (folder, kind)} for every backbone folder under the roots, up to `depth` levels down
    ("clip-vit-base-patch32" or "openai/clip-vit-base-patch32"); the first root wins on equal names."""
    found = {}
    for root in roots:
        root = pathlib.Path(root)
        if not root.is_dir():
            continue
        frontier = [root]
        for _ in range(depth):
            children = []
            for folder in frontier:
                for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    kind = model_kind(child)
                    if kind is not None:
                        found.setdefault(child.relative_to(root).as_posix(), (child, kind))
                    else:
                        children.append(child)
            frontier = children
    return found


def check_folder(folder: pathlib.Path, kind: str) -> None:
    """Raise MissingWeights naming the folder, what is missing and what is expected."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / w).is_file() for w in WEIGHTS):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        note = f" ({', '.join(pickled)} present, but only safetensors are loaded: convert it)" if pickled else ""
        missing.append("model.safetensors" + note)
    if not (folder / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json")
    if kind == "clip" and not any(all((folder / f).is_file() for f in group) for group in TOKENIZER):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise MissingWeights(
            f"{kind} backbone folder {folder} is missing {', '.join(missing)}. Expected: {expected_files(kind)} "
            "(the files of the model's Hugging Face repository; nothing is downloaded)."
        )


def features(output) -> torch.Tensor:
    """The embedding tensor out of whatever a transformers feature method returned (4.x tensor, 5.x ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = output.get(key) if hasattr(output, "get") else getattr(output, key, None)
        if value is not None:
            return value
    raise TypeError(f"cannot find an embedding in {type(output).__name__}")


def fingerprint(images: torch.Tensor) -> str:
    """Content hash of an image batch (its 8-bit values and shape), the key of the embedding cache."""
    data = to_8bit(images).detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16)
    digest.update(str(tuple(data.shape)).encode())
    return digest.hexdigest()


class Backbone:
    """A local backbone: the transformers model, its preprocessing, and a small cache of image embeddings."""

    kind = "?"

    def __init__(self, name: str, folder: pathlib.Path, model: torch.nn.Module, spec: PreprocessSpec,
                 batch_size: int = 32, cache_size: int = 16):
        self.name, self.folder, self.model, self.spec = name, folder, model, spec
        self.batch_size = batch_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict:
        config = self.model.config
        return {"name": self.name, "kind": self.kind, "model_type": config.model_type,
                "architecture": type(self.model).__name__, "folder": str(self.folder),
                "preprocessing": self.spec.describe()}

    def embed_images(self, images: torch.Tensor, cache: bool = False) -> torch.Tensor:
        """IMAGE batch [B, H, W, C] (or its preprocess.to_8bit form) -> [B, D] float32 embeddings on the CPU;
        resizing and normalizing run on the model's device.
        With `cache`, an identical batch seen before is not embedded again (reference sets, base-model samples)."""
        images = to_8bit(images)
        key = fingerprint(images) if cache else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return self._cache[key]
        out = []
        with torch.inference_mode():
            for chunk in images.split(self.batch_size):
                pixels = pixel_values(chunk, self.spec, self.device, self.dtype)
                out.append(self._image_forward(pixels).float().cpu())
        embeddings = torch.cat(out)
        if key is not None:
            self._cache[key] = embeddings
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return embeddings

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ClipBackbone(Backbone):
    """CLIPModel (image and text towers) or CLIPVisionModelWithProjection (image tower only)."""

    kind = "clip"

    def __init__(self, *args, tokenizer=None, **kw):
        super().__init__(*args, **kw)
        self.tokenizer = tokenizer

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None and hasattr(self.model, "get_text_features")

    def _image_forward(self, pixels):
        if hasattr(self.model, "get_image_features"):
            return features(self.model.get_image_features(pixel_values=pixels))
        return features(self.model(pixel_values=pixels))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), D] float32 projected text embeddings; each distinct text is encoded once."""
        if not self.has_text:
            raise ValueError(f"CLIP backbone {self.name} has no text tower (a vision-only model): CLIP-T needs a "
                             "full CLIPModel folder with its tokenizer")
        unique = list(dict.fromkeys(texts))
        limit = min(int(self.tokenizer.model_max_length or 77), int(self.model.config.text_config.max_position_embeddings))
        tokens = self.tokenizer(unique, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        with torch.inference_mode():
            embedded = features(self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)))
        embedded = embedded.float().cpu()
        index = {t: i for i, t in enumerate(unique)}
        return embedded[[index[t] for t in texts]]


class DinoBackbone(Backbone):
    """ViTModel (DINO v1) or Dinov2Model: the CLS embedding after the final layer norm."""

    kind = "dino"

    def _image_forward(self, pixels):
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]


def load_backbone(folder: str | os.PathLike, name: str | None = None, kind: str | None = None) -> Backbone:
    """Load a backbone folder on the CPU in float32, from local files only."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise MissingWeights(f"backbone folder {folder} does not exist. Expected a folder with {expected_files(kind or 'clip')}")
    kind = kind or model_kind(folder)
    if kind is None:
        raise MissingWeights(f"{folder}/config.json is missing or names no CLIP or DINO model (model_type clip, "
                             "clip_vision_model, vit, dinov2). Expected: " + expected_files("clip"))
    check_folder(folder, kind)
    import transformers

    local = dict(local_files_only=True, use_safetensors=True)
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    spec = PreprocessSpec.from_processor(processor)
    name = name or folder.name
    if kind == "clip":
        model = _load(transformers.CLIPModel, folder, local)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return ClipBackbone(name, folder, model, spec, tokenizer=tokenizer)
    if kind == "clip_vision":
        return ClipBackbone(name, folder, _load(transformers.CLIPVisionModelWithProjection, folder, local), spec)
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    if model_type == "vit":
        model = _load(transformers.ViTModel, folder, dict(local, add_pooling_layer=False))
    else:
        model = _load(transformers.AutoModel, folder, local)
    return DinoBackbone(name, folder, model, spec)


def _load(cls, folder: pathlib.Path, kwargs: dict) -> torch.nn.Module:
    model, info = cls.from_pretrained(str(folder), output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", []) if not any(h in k for h in HARMLESS_MISSING)]
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
        raise MissingWeights(f"{folder}/model.safetensors lacks {len(missing)} weights of {cls.__name__} ({shown}): "
                             "the weights do not match config.json")
    unexpected = info.get("unexpected_keys", [])
    if unexpected:
        logging.info("Driftless metrics: %s ignores %d weights of %s", cls.__name__, len(unexpected), folder)
    return model.float().eval().requires_grad_(False)
