"""The demo's subject pictures: four of the shapes model's subject (an orange cross, drawn by the drift
benchmark's generator), and photographs bundled with scikit-image for the tiny model's workflows: three views of
the cat in `chelsea`, and three of the cup in `coffee` (the second concept of the continual example)."""

import pathlib
import sys

DEMO_FOLDER = "driftless_demo"
NAMES = ("sks_cat_1.png", "sks_cat_2.png", "sks_cat_3.png")
CUP_NAMES = ("zwx_cup_1.png", "zwx_cup_2.png", "zwx_cup_3.png")
SHAPE_NAMES = ("sks_shape_1.png", "sks_shape_2.png", "sks_shape_3.png", "sks_shape_4.png")
SHAPE_SEED = 7  # the drift benchmark's subject pictures


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
    """Write the photos and the shapes into ComfyUI's input folder (once); returns their paths, the cat's first."""
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
    return paths + write_shape_pictures(folder)


def write_shape_pictures(folder: pathlib.Path) -> list[pathlib.Path]:
    """The shapes model's subject pictures, 32x32, exactly as the drift benchmark draws them (seeded)."""
    import numpy as np
    from PIL import Image

    from ..shapes.dataset import draw_subject

    pictures = draw_subject(len(SHAPE_NAMES), seed=SHAPE_SEED)
    paths = []
    for name, picture in zip(SHAPE_NAMES, pictures):
        path = folder / name
        if not path.exists():
            Image.fromarray((picture.numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    """`./driftless python -m driftless.headless.demo_photos INPUT_FOLDER`: the demo pictures, for the web UI."""
    if len(argv) != 1:
        print("usage: ./driftless python -m driftless.headless.demo_photos PATH/TO/ComfyUI/input", file=sys.stderr)
        return 2
    for path in write_demo_photos(pathlib.Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
