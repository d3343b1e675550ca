"""A folder of photos with same-named .txt captions, as people keep training data (kohya's sd-scripts, OneTrainer,
ComfyUI's own folder nodes), read into pixels at training sizes.

Pure file and tensor work (PIL, torch): `scan_folder` finds the photos in a folder and its sub-folders (inside a
root; nothing outside it is read), their captions, repeat counts and masks; `load_folder` reads them at their
aspect-ratio bucket's size (buckets.py) or centre-cropped to a square. Driftless Training Data from Folder
(nodes/training_data.py) encodes them with the graph's VAE and CLIP.

Conventions, each as the peers have it:
- caption: `photo.txt` beside `photo.png` (all its lines, joined by spaces); a photo without one (or with an empty
  one) gets the caption template, `{trigger}` and `{class}` filled in;
- trigger word: put right before the class noun where a caption names the class and lacks the trigger ("a photo
  of a dog" -> "a photo of a sks dog"); where the caption does not name the class, "sks dog, " goes in front;
- repeats: a folder named `N_anything` (kohya's convention, e.g. `10_sks dog`) counts each of its photos N times per
  epoch; other folders count them `repeats` times;
- mask: `photo_mask.png` beside `photo.png`, white where the subject is (its loss weighs 1), black elsewhere (the
  unmasked weight); grey values weigh in between.
"""

import pathlib
import re
from dataclasses import dataclass

import torch

from .buckets import bucket_sizes, nearest_bucket
from .photos import IMAGE_SUFFIXES, fit_image, read_image

MASK_SUFFIX = "_mask"
REPEATS_PREFIX = re.compile(r"^(\d+)_(.+)$")


@dataclass
class FolderPhoto:
    path: pathlib.Path
    caption: str
    caption_file: pathlib.Path | None  # None: the caption came from the template
    repeats: int
    mask: pathlib.Path | None


def resolve_folder(root, folder: str) -> pathlib.Path:
    """`folder` (relative, '/' or '\\' separated) inside `root`; refused if it leaves root or does not exist."""
    root = pathlib.Path(root).resolve()
    relative = pathlib.PurePosixPath(folder.strip().replace("\\", "/"))
    if not folder.strip() or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{folder!r}: name a folder inside the input folder {root}, without '..' (e.g. my_subject)")
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"{folder!r} leads out of the input folder {root}")
    if not path.is_dir():
        raise ValueError(f"no folder {folder!r} in the input folder {root}: make it and put the photos (with "
                         "same-named .txt captions) in it")
    return path


def fill_template(template: str, trigger: str, class_noun: str) -> str:
    """The caption template with {trigger} and {class} filled in, spaces tidied."""
    try:
        text = template.format_map({"trigger": trigger.strip(), "class": class_noun.strip()})
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"caption template {template!r}: only {{trigger}} and {{class}} can be filled in "
                         f"({e})") from None
    return " ".join(text.split())


def _word(word: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def place_trigger(caption: str, trigger: str, class_noun: str) -> str:
    """The caption with the trigger word right before the class noun (see the module docstring)."""
    trigger, class_noun = trigger.strip(), class_noun.strip()
    if not trigger or _word(trigger).search(caption):
        return caption
    found = _word(class_noun).search(caption) if class_noun else None
    if found:
        return f"{caption[:found.start()]}{trigger} {caption[found.start():]}"
    return f"{trigger} {class_noun}, {caption}" if class_noun else f"{trigger}, {caption}"


def folder_repeats(folder: pathlib.Path, default: int) -> int:
    """kohya's convention: a folder named `N_anything` repeats its photos N times; others `default` times."""
    match = REPEATS_PREFIX.match(folder.name)
    return int(match.group(1)) if match and int(match.group(1)) > 0 else default


def scan_folder(root, folder: str, *, trigger: str = "", class_noun: str = "", template: str = "{trigger} {class}",
                repeats: int = 1) -> list[FolderPhoto]:
    """The photos of `folder` (inside `root`) and of its sub-folders, sorted by path, with captions, repeats and
    masks; files and folders whose names start with '.' are left out, and so are `*_mask` images (masks). An empty
    folder is refused, naming it."""
    root_path = pathlib.Path(root).resolve()
    top = resolve_folder(root_path, folder)
    photos = []
    for path in sorted(p for p in top.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem.endswith(MASK_SUFFIX):
            continue
        if any(part.startswith(".") for part in path.relative_to(top).parts):  # hidden: .thumbnails, macOS ._photo.jpg
            continue
        if root_path not in path.resolve().parents:  # a link may not lead out of the input folder
            continue
        caption_file = path.with_suffix(".txt")
        text = caption_file.read_text(encoding="utf-8", errors="replace") if caption_file.is_file() else ""
        text = " ".join(text.split())
        caption = place_trigger(text, trigger, class_noun) if text else fill_template(template, trigger, class_noun)
        if not caption:
            raise ValueError(f"{path.name} has no caption: write {caption_file.name} beside it or give a caption "
                             "template (with a trigger word and class)")
        masks = [m for m in (path.with_name(f"{path.stem}{MASK_SUFFIX}{s}") for s in IMAGE_SUFFIXES) if m.is_file()]
        photos.append(FolderPhoto(path, caption, caption_file if text else None, folder_repeats(path.parent, repeats),
                                  masks[0] if masks else None))
    if not photos:
        raise ValueError(f"no photos in {top} or its sub-folders: put the subject's photos there (png, jpg, webp, "
                         "bmp), each with a same-named .txt caption")
    return photos


def _read_mask(path: pathlib.Path, height: int, width: int, photo: pathlib.Path) -> torch.Tensor:
    """The mask as [H, W, 1] in [0, 1] (its luminance); it must have its photo's size."""
    mask = read_image(path)
    if mask.shape[:2] != (height, width):
        raise ValueError(f"{path.name} is {mask.shape[1]}x{mask.shape[0]} but {photo.name} is {width}x{height}: "
                         "a mask needs its photo's size")
    return (mask * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True).clamp(0, 1)


@dataclass
class LoadedPhoto:
    image: torch.Tensor  # [h, w, 3] in [0, 1], at the training size
    mask: torch.Tensor | None  # [h, w] in [0, 1] at the same size, or None


def load_folder(photos: list[FolderPhoto], resolution: int, buckets: bool = True, step: int = 64) -> list[LoadedPhoto]:
    """Each photo (and mask) at its training size: with buckets, the bucket nearest its aspect ratio at about
    resolution² pixels (scaled to cover it, centre-cropped); without, centre-cropped to resolution x resolution."""
    sizes = bucket_sizes(resolution, step) if buckets else [(resolution, resolution)]
    out = []
    for photo in photos:
        image = read_image(photo.path)
        height, width = image.shape[:2]
        mask = _read_mask(photo.mask, height, width, photo.path) if photo.mask is not None else None
        w, h = nearest_bucket(width, height, sizes)
        out.append(LoadedPhoto(fit_image(image, h, w), None if mask is None else fit_image(mask, h, w)[..., 0]))
    return out


def latent_weights(mask: torch.Tensor, latent_size: tuple[int, int], unmasked_weight: float) -> torch.Tensor:
    """A pixel mask [H, W] (1 = the subject) as the loss weight map [1, h, w] of its latent: the mask's mean over each
    latent pixel's area, clamped to [unmasked_weight, 1] (OneTrainer's masked loss)."""
    small = torch.nn.functional.interpolate(mask[None, None].float(), size=latent_size, mode="area")[0]
    return small.clamp(min=unmasked_weight, max=1.0)
