"""A procedurally generated, captioned picture set: shapes x colours x backgrounds at 32x32.

Every picture is one flat-coloured shape (circle, square, triangle) of random size and position on a
flat background; its caption names all three: "a red circle on a black background". Rendering is
2x supersampled (soft edges, like a real picture's anti-aliasing) and seeded, so (index, seed) gives the
same picture on every machine. The personalization subject is a shape the pretraining never shows
(an orange plus-shaped cross) named by a trigger word the pretraining never uses.

Pixels are float32 in [0, 1], [H, W, 3] like a ComfyUI IMAGE.
"""

from dataclasses import dataclass

import numpy as np
import torch

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.85, 0.1)}
BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
# the novel subject: a shape and colour never seen in pretraining, named by a token never seen either
TRIGGER = "sks"
SUBJECT_SHAPE, SUBJECT_COLOUR = "cross", (1.0, 0.5, 0.0)
SUPERSAMPLE = 2
SIDE_RANGE = (12, 22)  # the shape's bounding box side, pixels


@dataclass(frozen=True)
class Picture:
    shape: str
    colour: str
    background: str
    side: int
    centre: tuple[float, float]  # (row, col) of the bounding box centre, pixels

    @property
    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background)


def caption(shape: str, colour: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def subject_caption(background: str = "white", colour: str | None = None) -> str:
    """The personalization prompt: "a sks on a white background", or with a colour, "a blue sks on ..."."""
    return f"a {colour + ' ' if colour else ''}{TRIGGER} on a {background} background"


def shape_mask(shape: str, side: int, centre: tuple[float, float], size: int = SIZE) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, [size, size], from a SUPERSAMPLE-times finer grid."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE  # sample positions in pixel units
    y, x = np.meshgrid(coords, coords, indexing="ij")
    dy, dx, h = y - centre[0], x - centre[1], side / 2
    if shape == "circle":
        inside = dy**2 + dx**2 <= h**2
    elif shape == "square":
        inside = (np.abs(dy) <= h) & (np.abs(dx) <= h)
    elif shape == "triangle":  # apex up, base at the bottom of the box
        inside = (dy <= h) & (dy >= -h) & (np.abs(dx) <= (dy + h) / 2)
    elif shape == "cross":  # plus sign, arms a third of the side wide
        arm = side / 6
        inside = ((np.abs(dy) <= h) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= h) & (np.abs(dy) <= arm))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


def render(shape: str, rgb, background_rgb, side: int, centre) -> np.ndarray:
    """One picture, [SIZE, SIZE, 3] float32."""
    m = shape_mask(shape, side, centre)[..., None]
    return (m * np.asarray(rgb, np.float32) + (1 - m) * np.asarray(background_rgb, np.float32)).astype(np.float32)


def draw_layout(rng: np.random.Generator) -> tuple[int, tuple[float, float]]:
    side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
    margin = side / 2 + 1
    return side, (float(rng.uniform(margin, SIZE - margin)), float(rng.uniform(margin, SIZE - margin)))


def draw(n: int, seed: int) -> tuple[torch.Tensor, list[Picture]]:
    """n pictures of the pretraining set: uniform over shapes, colours and backgrounds. Returns (IMAGE, labels)."""
    rng = np.random.default_rng(seed)
    pictures, images = [], []
    for _ in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        side, centre = draw_layout(rng)
        pictures.append(Picture(shape, colour, background, side, centre))
        images.append(render(shape, COLOURS[colour], BACKGROUNDS[background], side, centre))
    return torch.from_numpy(np.stack(images)), pictures


def draw_subject(n: int, seed: int, background: str = "white") -> torch.Tensor:
    """n pictures of the personalization subject (the orange cross) at random sizes and positions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        side, centre = draw_layout(rng)
        out.append(render(SUBJECT_SHAPE, SUBJECT_COLOUR, BACKGROUNDS[background], side, centre))
    return torch.from_numpy(np.stack(out))


def all_captions() -> list[str]:
    return [caption(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS]


def labels(pictures: list[Picture]) -> tuple[torch.Tensor, torch.Tensor]:
    """(shape index, colour index) per picture, for the classifier."""
    shape = torch.tensor([SHAPES.index(p.shape) for p in pictures])
    colour = torch.tensor([list(COLOURS).index(p.colour) for p in pictures])
    return shape, colour
