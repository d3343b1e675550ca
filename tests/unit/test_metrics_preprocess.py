"""Tensor preprocessing against the transformers image processors on real photos (skimage.data).

Processor settings are those of the real repositories: openai/clip-vit-base-patch32 (CLIPImageProcessor),
facebook/dino-vits16 (ViTImageProcessor: exact 224x224, bilinear, ImageNet statistics) and
facebook/dinov2-small (BitImageProcessor: shortest edge 256, bicubic, center crop 224).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data

from driftless.metrics.preprocess import PreprocessSpec, pixel_values, resized_size

IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
PROCESSORS = {
    "clip": ("CLIPImageProcessor", {}),
    "dino_v1": ("ViTImageProcessor", dict(size=224, resample=2, **IMAGENET)),
    "dinov2": ("BitImageProcessor", dict(size={"shortest_edge": 256}, resample=3, do_center_crop=True,
                                         crop_size={"height": 224, "width": 224}, **IMAGENET)),
}
PHOTOS = ("chelsea", "astronaut", "coffee", "camera")  # colour at 3 sizes and aspect ratios, and grey
# one 8-bit level after normalization: 1 / (255 * smallest std)
ONE_LEVEL = {"clip": 1 / (255 * 0.26130258), "dino_v1": 1 / (255 * 0.224), "dinov2": 1 / (255 * 0.224)}


def _photo(name: str) -> np.ndarray:
    arr = getattr(data, name)()
    return np.stack([arr] * 3, -1) if arr.ndim == 2 else arr


def _image(arr: np.ndarray) -> torch.Tensor:
    """As ComfyUI's LoadImage gives it: float32 [1, H, W, 3] = uint8 / 255."""
    return torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def _processor(kind: str, backend: str = "torchvision"):
    """The processor class of a backend: 5.x names the torchvision one plainly and the PIL one *Pil;
    4.x names the PIL one plainly and the torchvision one *Fast."""
    name, kwargs = PROCESSORS[kind]
    suffix = {"torchvision": "" if TRANSFORMERS_5 else "Fast", "pil": "Pil" if TRANSFORMERS_5 else ""}[backend]
    cls = getattr(transformers, name + suffix, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name + suffix}")
    return cls(**kwargs)


@pytest.mark.parametrize("kind", list(PROCESSORS))
@pytest.mark.parametrize("photo", PHOTOS)
def test_equals_the_default_processor_on_real_photos(kind, photo):
    """The torchvision backend (transformers 5's default, 4.x's *Fast classes), on the CPU: identical output."""
    arr = _photo(photo)
    processor = _processor(kind)
    expected = processor(images=Image.fromarray(arr), return_tensors="pt")["pixel_values"]
    ours = pixel_values(_image(arr), PreprocessSpec.from_processor(processor))
    assert ours.shape == expected.shape == (1, 3, 224, 224)
    assert (ours - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", list(PROCESSORS))
@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("path", ["PIL processor", "float path (non-CPU devices)"])
def test_within_one_8bit_level_of_the_pil_processor_and_on_other_devices(kind, photo, path, monkeypatch):
    """PIL's fixed-point resize (transformers 4.x's default, and 5.x's PIL backend), and the float two-pass resize
    used off the CPU, differ from torchvision's uint8 kernel by one 8-bit level at a small fraction of pixels."""
    import driftless.metrics.preprocess as pre

    arr = _photo(photo)
    if path == "PIL processor":
        processor = _processor(kind, "pil")
        expected = torch.as_tensor(processor(images=Image.fromarray(arr), return_tensors="np")["pixel_values"])
    else:
        processor = _processor(kind)
        expected = processor(images=Image.fromarray(arr), return_tensors="pt")["pixel_values"]
        real = pre.resize_8bit
        monkeypatch.setattr(pre, "resize_8bit", lambda x, size, mode: real(x, size, mode, native=False))
    ours = pre.pixel_values(_image(arr), PreprocessSpec.from_processor(processor))
    diff = (ours - expected).abs()
    assert diff.max().item() <= ONE_LEVEL[kind] + 1e-5
    assert diff.mean().item() <= 1e-3
    assert (diff > 1e-5).float().mean().item() <= 0.02  # share of values off by one level


def test_batched_equals_one_at_a_time_and_alpha_and_grey_are_handled():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 96, 130, 3, generator=g)
    spec = PreprocessSpec.from_processor(_processor("clip"))
    whole = pixel_values(images, spec)
    single = torch.cat([pixel_values(images[i : i + 1], spec) for i in range(5)])
    assert torch.equal(whole, single)
    rgba = torch.cat([images, torch.ones(5, 96, 130, 1)], dim=-1)
    assert torch.equal(pixel_values(rgba, spec), whole)
    grey = images[..., :1]
    assert torch.equal(pixel_values(grey, spec), pixel_values(grey.expand(-1, -1, -1, 3), spec))


@pytest.mark.parametrize("shape", [(300, 451), (451, 300), (512, 512), (223, 225), (1000, 17), (64, 64)])
@pytest.mark.parametrize("size", [224, 256, 32])
def test_output_size_follows_transformers(shape, size):
    from transformers.image_transforms import get_resize_output_image_size

    expected = get_resize_output_image_size(np.zeros((*shape, 3)), size, default_to_square=False,
                                            input_data_format="channels_last")
    assert resized_size(*shape, PreprocessSpec(("shortest_edge", size), "bicubic", None, None, None, None)) == tuple(expected)


def test_spec_from_processor_settings_of_each_family_and_of_transformers_4():
    dino = PreprocessSpec.from_processor(_processor("dino_v1"))
    assert dino.size == ("exact", (224, 224)) and dino.crop is None and dino.resample == "bilinear"
    v2 = PreprocessSpec.from_processor(_processor("dinov2"))
    assert v2.size == ("shortest_edge", 256) and v2.crop == (224, 224) and v2.resample == "bicubic"
    assert v2.mean == (0.485, 0.456, 0.406)
    # transformers 4.x slow processors keep plain dicts and int resample ids
    old = SimpleNamespace(do_resize=True, size={"shortest_edge": 224}, do_center_crop=True,
                          crop_size={"height": 224, "width": 224}, resample=3, do_rescale=True,
                          rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    spec = PreprocessSpec.from_processor(old)
    assert spec.size == ("shortest_edge", 224) and spec.crop == (224, 224) and spec.std == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="not supported"):
        PreprocessSpec.from_processor(SimpleNamespace(**{**old.__dict__, "resample": 0}))


def test_center_crop_pads_when_the_crop_is_larger():
    spec = PreprocessSpec(("exact", (20, 10)), "bilinear", (24, 24), 1 / 255, None, None)
    out = pixel_values(torch.ones(1, 40, 20, 3), spec)
    assert out.shape == (1, 3, 24, 24)
    assert out[0, 0, 2:22, 7:17].min().item() == 1.0 and out[0, 0, :, :7].max().item() == 0.0
