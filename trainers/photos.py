"""The subject's photos from ComfyUI's input folder as one image batch: names or patterns, one per line.

Pure file and tensor work (PIL, torch): `find_photos` resolves the lines inside a root folder (nothing outside it
is ever read), `load_photos` reads them as LoadImage does (EXIF orientation, RGB, values in [0, 1]) and brings
them to one size. Driftless Load Images (nodes/training_data.py) wires them to the input folder.
"""

import pathlib

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _lines(files: str) -> list[str]:
    return [line.strip() for line in files.splitlines() if line.strip()]


def find_photos(root, files: str) -> list[pathlib.Path]:
    """The image files under `root` named by `files`: one name or pattern (`*`, `?`, `[...]`) per line, relative to
    `root`. In line order, each line's matches by name, each file once. A line that leaves `root` or matches no image
    is a ValueError saying so."""
    root = pathlib.Path(root).resolve()
    lines = _lines(files)
    if not lines:
        raise ValueError("no photos named: give one file name or pattern per line, e.g. my_subject_*.png")
    found: list[pathlib.Path] = []
    for line in lines:
        relative = pathlib.PurePosixPath(line.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{line!r}: name photos relative to the input folder {root}, without '..'")
        matches = sorted(p for p in root.glob(str(relative)) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        matches = [p for p in matches if root in p.resolve().parents]  # a link may not lead out of the folder
        if not matches:
            raise ValueError(f"no image in {root} matches {line!r}: put the photos there (png, jpg, webp) or change "
                             "the name")
        found.extend(p for p in matches if p not in found)
    return found


def read_image(path: pathlib.Path) -> torch.Tensor:
    """One image as LoadImage reads it: EXIF orientation applied, RGB, float32 in [0, 1], [H, W, 3]. A file that is
    not a readable image is a ValueError naming it."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode == "I":
                image = image.point(lambda v: v * (1 / 255))
            return torch.from_numpy(np.array(image.convert("RGB")).astype(np.float32) / 255.0)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} cannot be read as an image ({type(e).__name__}: {e}): replace or remove it") from None


def fit_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre-crop `image` [H, W, 3] to the aspect of height x width, then scale it to that size (antialiased)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if h * width > w * height:  # too tall: crop rows
        keep = round(w * height / width)
        image = image[(h - keep) // 2:(h - keep) // 2 + keep]
    elif h * width < w * height:  # too wide: crop columns
        keep = round(h * width / height)
        image = image[:, (w - keep) // 2:(w - keep) // 2 + keep]
    scaled = torch.nn.functional.interpolate(image.movedim(-1, 0)[None], size=(height, width), mode="bilinear",
                                             antialias=True, align_corners=False)
    return scaled[0].movedim(0, -1).clamp(0.0, 1.0)


def load_photos(paths: list[pathlib.Path], size: int = 0) -> torch.Tensor:
    """The photos as one IMAGE batch [N, H, W, 3]. size 0: the first photo's size (the others centre-cropped and
    scaled to it); size > 0: every photo centre-cropped to a square and scaled to size x size."""
    images = [read_image(p) for p in paths]
    height, width = (size, size) if size > 0 else images[0].shape[:2]
    return torch.stack([fit_image(image, height, width) for image in images])
