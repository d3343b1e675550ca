"""The demo's subject photos: three views of the cat in scikit-image's bundled `chelsea` photograph."""

import pathlib

DEMO_FOLDER = "driftless_demo"
NAMES = ("sks_cat_1.png", "sks_cat_2.png", "sks_cat_3.png")


def write_demo_photos(input_directory: pathlib.Path, size: int = 64) -> list[pathlib.Path]:
    """Write the photos into ComfyUI's input folder (once); returns their paths."""
    try:
        from skimage import data
    except ImportError:
        raise RuntimeError("the demo photos come from scikit-image: run `./driftless setup` to install it") from None
    from PIL import Image, ImageOps

    folder = input_directory / DEMO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(data.chelsea())  # 451 x 300
    w, h = photo.size
    views = [
        photo.crop((w // 2 - h // 2, 0, w // 2 + h // 2, h)),  # centred
        ImageOps.mirror(photo.crop((0, 0, h, h))),  # left side, mirrored
        photo.crop((w // 5, h // 8, w // 5 + 3 * h // 4, h // 8 + 3 * h // 4)),  # closer
    ]
    paths = []
    for name, view in zip(NAMES, views):
        path = folder / name
        if not path.exists():
            view.convert("RGB").resize((size, size), Image.BICUBIC).save(path)
        paths.append(path)
    return paths
