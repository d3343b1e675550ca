"""What a transformers image processor does to a photo, done on a whole IMAGE batch at once on the model's device.

The processors (CLIPImageProcessor, ViTImageProcessor for DINO v1, BitImageProcessor for DINOv2) take 8-bit
images one at a time: resize (shortest edge or exact size; bicubic or bilinear, antialiased), center crop,
rescale by 1/255, normalize by mean and std. Here the same steps run on a [B, H, W, C] float IMAGE batch
(ComfyUI's layout, values in [0, 1]), batched:

1. quantize to 8 bits, round(255·x) (what saving the image as a PNG and loading it back gives; a no-op for
   images that came from files), where the images are, once per batch for all backbones (`to_8bit`); the
   uint8 batch then moves to the model's device for the rest,
2. resize with `torch.nn.functional.interpolate(antialias=True)`: on the CPU on the 8-bit values (torch's
   native uint8 kernels, as torchvision does); on other devices as two float32 passes (width, then height),
   each rounded to 8 bits, which is how the uint8 kernels and PIL work,
3. center crop at ((H − h) // 2, (W − w) // 2), zero-padding first where the crop is larger,
4. (x − 255·mean) / (255·std) in float32 (the processors' fused rescale-and-normalize).

On the CPU this is exactly the processors' default (torchvision) backend of transformers 5; PIL (the PIL
backend, and transformers 4.x's default processors) resizes with its own fixed-point weights, which differ
by one 8-bit level at a small fraction of pixels; so does the float path on other devices (the README and
tests/unit/test_metrics_preprocess.py give the measured differences).
"""

from dataclasses import dataclass

import torch

RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL's resampling filter ids


@dataclass(frozen=True)
class PreprocessSpec:
    """The processor's settings that matter. `size` is ("shortest_edge", n) or ("exact", (h, w)); None = no resize."""

    size: tuple | None
    resample: str
    crop: tuple[int, int] | None
    rescale: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_processor(cls, processor) -> "PreprocessSpec":
        """Read a transformers image processor (4.x slow, 5.x torchvision or PIL backend) into a spec."""
        size = None
        if getattr(processor, "do_resize", True):
            raw = processor.size
            shortest, longest = _field(raw, "shortest_edge"), _field(raw, "longest_edge")
            height, width = _field(raw, "height"), _field(raw, "width")
            if isinstance(raw, int):
                size = ("exact", (raw, raw))
            elif shortest and not longest:
                size = ("shortest_edge", int(shortest))
            elif height and width:
                size = ("exact", (int(height), int(width)))
            else:
                raise ValueError(f"image processor size {raw!r} is not supported (shortest_edge, or height and width)")
        crop = None
        if getattr(processor, "do_center_crop", False):
            raw = processor.crop_size
            crop = (int(raw), int(raw)) if isinstance(raw, int) else (int(_field(raw, "height")), int(_field(raw, "width")))
        resample = RESAMPLE.get(int(getattr(processor, "resample", 2) or 0))
        if resample not in ("bilinear", "bicubic"):
            raise ValueError(f"image processor resample filter {processor.resample!r} is not supported (bilinear, bicubic)")
        rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else None
        normalize = getattr(processor, "do_normalize", True)
        mean = tuple(float(v) for v in processor.image_mean) if normalize else None
        std = tuple(float(v) for v in processor.image_std) if normalize else None
        return cls(size, resample, crop, rescale, mean, std)

    def describe(self) -> dict:
        return {"size": list(self.size) if self.size else None, "resample": self.resample,
                "center_crop": list(self.crop) if self.crop else None, "rescale": self.rescale,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None}


def _field(size, key):
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def resized_size(height: int, width: int, spec: PreprocessSpec) -> tuple[int, int]:
    """The processors' output size (transformers.image_transforms.get_resize_output_image_size, not square)."""
    if spec.size is None:
        return height, width
    kind, value = spec.size
    if kind == "exact":
        return tuple(value)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(value * long / short)
    return (new_long, value) if width <= height else (value, new_long)


def to_8bit(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] in [0, 1] -> uint8 [B, 3, H, W] = round(255·x) (alpha dropped, grey repeated).

    Computed one image at a time where the images are (a cache-sized pass instead of several over the whole
    batch; 4x faster on a CPU), into a channels-last tensor: the layout torch's uint8 resize kernels prefer.
    A uint8 [B, 3, H, W] batch (already quantized) is returned as it is.
    """
    if images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3:
        return images
    if images.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
    channels = images.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"an IMAGE needs 1, 3 or 4 channels, got {channels}")
    out = torch.empty((*images.shape[:3], 3), dtype=torch.uint8, device=images.device)
    for i in range(images.shape[0]):
        image = images[i, ..., :3] if channels >= 3 else images[i].expand(*images.shape[1:3], 3)
        out[i] = image.float().clamp(0, 1).mul_(255).round_()
    return out.permute(0, 3, 1, 2)


def resize_8bit(images: torch.Tensor, size: tuple[int, int], mode: str, native: bool | None = None) -> torch.Tensor:
    """Antialiased resize of uint8 [B, 3, H, W] to uint8 [B, 3, *size].

    On the CPU this is torch's native uint8 kernel, what torchvision (the processors' default backend) runs:
    separable, width first, 8-bit rounding between the passes, like PIL. Other devices have no uint8 kernel;
    there the same two passes run in float32, each clamped and rounded to 8 bits, which leaves one 8-bit
    level of difference at about 1% of pixels (fixed-point vs float weights). `native` forces either path.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if native is None:
        native = images.device.type == "cpu" and (mode == "bicubic" or _native_uint8_bilinear())
    if native:
        return torch.nn.functional.interpolate(images, size=list(size), mode=mode, align_corners=False, antialias=True)
    x = images.float()
    for step in ((x.shape[-2], size[1]), tuple(size)):
        if tuple(x.shape[-2:]) != step:
            x = torch.nn.functional.interpolate(x, size=list(step), mode=mode, align_corners=False, antialias=True)
            x = x.clamp_(0, 255).round_()
    return x.to(torch.uint8)


def _native_uint8_bilinear() -> bool:
    import platform

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The processors' center crop; pads with zeros (left/top getting the smaller half) where the image is smaller."""
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        images = torch.nn.functional.pad(images, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        height, width = images.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[..., top : top + crop_h, left : left + crop_w]


def normalize(images: torch.Tensor, spec: PreprocessSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 -> (x·rescale − mean) / std, fused as (x − mean/rescale) / (std/rescale) like the processors."""
    x = images.to(torch.float32)
    if spec.mean is not None:
        scale = 1.0 / spec.rescale if spec.rescale else 1.0
        mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1) * scale
        std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1) * scale
        x = (x - mean) / std
    elif spec.rescale:
        x = x * spec.rescale
    return x.to(dtype)


def pixel_values(images: torch.Tensor, spec: PreprocessSpec, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """IMAGE batch [B, H, W, C] in [0, 1] (or its to_8bit form) -> the model's pixel_values [B, 3, h, w].

    Quantization happens where the images are; resize, crop and normalize on `device` (the model's)."""
    x = to_8bit(images)
    x = x.to(device) if device is not None else x
    x = resize_8bit(x, resized_size(*x.shape[-2:], spec), spec.resample)
    if spec.crop is not None:
        x = center_crop(x, spec.crop)
    return normalize(x.contiguous(), spec, dtype)  # the models get contiguous NCHW, as from the processors
