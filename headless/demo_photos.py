"""The demo's subject pictures: four of the shapes model's subject (an orange cross, drawn by the drift
benchmark's generator), and photographs bundled with scikit-image for the tiny model's workflows: three views of
the cat in `chelsea`, three of the cup in `coffee` (the second concept of the continual example), and a folder
dataset of the cat (`sks_cat_folder/`: mixed sizes, captions beside two photos, a mask, a `2_` repeats folder)."""

import pathlib
import sys

DEMO_FOLDER = "driftless_demo"
NAMES = ("sks_cat_1.png", "sks_cat_2.png", "sks_cat_3.png")
CUP_NAMES = ("zwx_cup_1.png", "zwx_cup_2.png", "zwx_cup_3.png")
SHAPE_NAMES = ("sks_shape_1.png", "sks_shape_2.png", "sks_shape_3.png", "sks_shape_4.png")
SHAPE_SEED = 7  # the drift benchmark's subject pictures
FOLDER = "sks_cat_folder"  # inside DEMO_FOLDER: the folder dataset example's photos


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
    return paths + write_shape_pictures(folder) + write_demo_folder(folder / FOLDER, Image.fromarray(data.chelsea()))


def write_demo_folder(folder: pathlib.Path, photo) -> list[pathlib.Path]:
    """The folder dataset example's photos of the cat in `photo` (chelsea, 451 x 300): a square view with a caption,
    a wide one without (the caption template) with a mask on the cat's half, and a tall close-up with a caption in a
    `2_closeups` folder (kohya's convention: twice per epoch). Written once; returns every file."""
    from PIL import Image

    w, h = photo.size
    files = {
        "cat.png": photo.crop((w // 2 - h // 2, 0, w // 2 + h // 2, h)).resize((64, 64), Image.BICUBIC),
        "cat_wide.png": photo.crop((0, h // 4, w, h // 4 + w // 2)).resize((96, 48), Image.BICUBIC),
        "2_closeups/cat_face.png": photo.crop((w // 4, 0, w // 4 + 3 * h // 5, h)).resize((48, 80), Image.BICUBIC),
    }
    mask = Image.new("L", (96, 48), 0)
    mask.paste(255, (40, 0, 96, 48))  # the cat is on the right of the wide view
    files["cat_wide_mask.png"] = mask
    captions = {"cat.txt": "a photo of a cat on a rug", "2_closeups/cat_face.txt": "a close-up photo of a cat's face"}
    paths = []
    for name, image in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            image.convert("L" if name.endswith("_mask.png") else "RGB").save(path)
        paths.append(path)
    for name, text in captions.items():
        path = folder / name
        if not path.exists():
            path.write_text(text + "\n")
        paths.append(path)
    return paths


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
