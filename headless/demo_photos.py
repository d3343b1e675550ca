"""The demo's subject photos, from photographs bundled with scikit-image: three views of the cat in `chelsea`
(the demo's subject), and three of the cup in `coffee` (the second concept of the continual example)."""

import pathlib

DEMO_FOLDER = "driftless_demo"
NAMES = ("sks_cat_1.png", "sks_cat_2.png", "sks_cat_3.png")
CUP_NAMES = ("zwx_cup_1.png", "zwx_cup_2.png", "zwx_cup_3.png")


def _square_views(photo) -> list:
    """Three square crops of a landscape photo: centred, the left side mirrored, and a closer one."""
    from PIL import ImageOps

    w, h = photo.size
    return [
        photo.crop((w // 2 - h // 2, 0, w // 2 + h // 2, h)),
        ImageOps.mirror(photo.crop((0, 0, h, h))),
        photo.crop((w // 5, h // 8, w // 5 + 3 * h // 4, h // 8 + 3 * h // 4)),
    ]


def write_demo_photos(input_directory: pathlib.Path, size: int = 64) -> list[pathlib.Path]:
    """Write the photos into ComfyUI's input folder (once); returns their paths, the cat's first."""
    try:
        from skimage import data
    except ImportError:
        raise RuntimeError("the demo photos come from scikit-image: run `./driftless setup` to install it") from None
    from PIL import Image

    folder = input_directory / DEMO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for names, photo in ((NAMES, data.chelsea()), (CUP_NAMES, data.coffee())):  # 451 x 300, 600 x 400
        for name, view in zip(names, _square_views(Image.fromarray(photo))):
            path = folder / name
            if not path.exists():
                view.convert("RGB").resize((size, size), Image.BICUBIC).save(path)
            paths.append(path)
    return paths
