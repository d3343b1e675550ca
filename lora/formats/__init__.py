"""LoRA file formats: detect, convert to ComfyUI-native keys for a model, export from them.

Formats (one module each): `comfyui` (native, the default), `diffusers` (diffusers/PEFT), `kohya`
(sd-scripts). Every conversion is a plain key/tensor mapping through the in-between form of
layers.py (per layer: down, up, alpha with scale = alpha / rank); the model-specific names come from
ComfyUI's own key maps (layout.py). Neither peft nor diffusers is needed at run time.

    detect_format(tensors)            -> "comfyui" | "diffusers" | "kohya", or UnknownLoraFormat
    to_native(lora, layout)           -> LoraWeights with native keys, checked against the model
    export(lora, layout, fmt)         -> LoraWeights in `fmt` (file metadata in .raw_metadata)
"""

import logging

from ..files import FORMAT as NATIVE_TAG
from ..files import LoraWeights
from . import comfyui, diffusers, kohya
from .architecture import Architecture, guess
from .layers import LayerWeights, RowBlock, fits, join_rows, shaped_for

FORMATS = {m.NAME: m for m in (comfyui, diffusers, kohya)}
DEFAULT_FORMAT = comfyui.NAME
FORMAT_KEY = "lora_format"  # metadata entry naming a file's format (written on export and on import)
# adapter kinds other than plain LoRA, by a key fragment that only they use
UNSUPPORTED_KINDS = {
    "hada_w1": "LoHa", "lokr_w1": "LoKr", "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA",
    "lora_mid": "LoCon with a Tucker mid tensor", "oft_blocks": "OFT", ".lora_B.bias": "LoRA with bias terms",
}


class UnknownLoraFormat(ValueError):
    pass


class LoraDoesNotFit(ValueError):
    pass


def formats_understood() -> str:
    return "; ".join(f"{name}: {m.DESCRIPTION}" for name, m in FORMATS.items())


def _sample(keys, n: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", … ({len(keys)} keys in all)" if len(keys) > n else f" ({len(keys)} keys)")


def detect_format(tensors: dict) -> str:
    """The one format every key of `tensors` belongs to; an actionable error otherwise."""
    keys = list(tensors)
    for name, module in FORMATS.items():
        kinds = [module.classify(k) for k in keys]
        if all(kinds) and "lora" in kinds:
            return name
    for fragment, kind in UNSUPPORTED_KINDS.items():
        if any(fragment in k for k in keys):
            raise UnknownLoraFormat(
                f"this file holds a {kind} adapter ({fragment!r} keys), which Driftless does not read: only plain "
                f"LoRA layers (down/up pairs with an alpha). Keys found: {_sample(keys)}")
    partly = {name: sum(bool(m.classify(k)) for k in keys) for name, m in FORMATS.items()}
    mixed = [name for name, count in partly.items() if count]
    hint = ""
    if len(mixed) > 1:
        hint = f" It mixes key layouts ({', '.join(mixed)}): a file must use one."
    elif mixed:
        stray = [k for k in keys if not FORMATS[mixed[0]].classify(k)]
        hint = f" Most keys are {mixed[0]} keys, but these are not: {_sample(stray, 4)}."
    raise UnknownLoraFormat(
        f"no LoRA layers found in a key layout Driftless understands.{hint} Formats understood: "
        f"{formats_understood()}. Keys found: {_sample(keys)}.")


def read_layers(lora: dict) -> tuple[str, dict[str, LayerWeights], list[str]]:
    """(format, {name in that format: weights}, keys left out as not diffusion-model LoRA layers (text encoders, …))."""
    fmt = detect_format(lora)
    module = FORMATS[fmt]
    # an export not yet written keeps its format's entries (the PEFT config) in raw_metadata
    metadata = {**(getattr(lora, "metadata", {}) or {}), **(getattr(lora, "raw_metadata", {}) or {})}
    left_out = [k for k in lora if module.classify(k) == "ignored"]
    return fmt, module.read(dict(lora), metadata), left_out


def to_native(lora: dict, layout) -> LoraWeights:
    """`lora` (any understood format) as ComfyUI-native keys for the model of `layout`.

    Every LoRA layer must name a layer of the model with matching shapes; otherwise the error says how
    many match and, where the names or shapes tell, which architecture the LoRA was made for.
    """
    fmt, layers, left_out = read_layers(lora)
    names = FORMATS[fmt].module_names(layout)
    blocks, unknown, misshaped = {}, [], []
    for name, weights in layers.items():
        target = names.get(name)
        if target is None:
            unknown.append(name)
            continue
        # a whole layer, or (layer, DiffusersPart): a block of a fused layer's rows (diffusers' to_q of a qkv)
        module, part = (target, None) if isinstance(target, str) else target
        shape = layout.shapes[module]
        rows = (part.rows, *shape[1:]) if part is not None else shape
        if not fits(weights, rows):
            misshaped.append((name, weights, rows))
            continue
        start, swapped = (part.start, part.swap_halves) if part is not None else (0, False)
        blocks.setdefault(module, []).append(RowBlock(start, rows[0], swapped, weights))
    mapped = {}
    for module, found in blocks.items():
        shape = layout.shapes[module]
        whole = len(found) == 1 and found[0].rows == shape[0] and not found[0].swapped
        mapped[module] = shaped_for(found[0].weights if whole else join_rows(found, shape[0]), shape)
    if unknown or misshaped:
        raise LoraDoesNotFit(_does_not_fit(fmt, layers, unknown, misshaped, layout, left_out))
    if left_out:
        logging.warning("Driftless: %d keys of this %s LoRA are not diffusion-model LoRA layers and are left out (%s)",
                        len(left_out), fmt, _sample(left_out, 3))
    metadata = dict(getattr(lora, "metadata", {}) or {})
    if metadata.get("format") != NATIVE_TAG:
        metadata.pop("format", None)  # safetensors' "pt" or another tool's tag: not a Driftless training record
    metadata[FORMAT_KEY] = fmt
    if left_out:
        metadata["left_out_keys"] = len(left_out)
    tensors, _ = comfyui.write(mapped, layout)
    return LoraWeights(tensors, metadata)


def export(lora: dict, layout, fmt: str) -> LoraWeights:
    """A native (or any understood) LoRA written in `fmt` for the model of `layout`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; choose one of {list(FORMATS)}")
    native = to_native(lora, layout)
    layers = comfyui.read(dict(native), {})
    tensors, raw = FORMATS[fmt].write(layers, layout)
    metadata = dict(native.metadata)
    metadata[FORMAT_KEY] = fmt
    if fmt != DEFAULT_FORMAT:
        # safetensors' own convention for PyTorch tensors; the Driftless record stays under its other keys
        metadata.pop("format", None)
        raw = {"format": "pt", **raw}
    return LoraWeights(tensors, metadata, raw_metadata=raw)


def _does_not_fit(fmt, layers, unknown, misshaped, layout, left_out) -> str:
    total = len(layers)
    matching = total - len(unknown) - len(misshaped)
    text = f"does not fit this model: {matching} of {total} LoRA layers match its modules"
    if unknown:
        text += f" (first missing: {sorted(unknown)[0]})"
    if misshaped:
        name, w, shape = misshaped[0]
        text += (f" ({len(misshaped)} with other shapes, e.g. {name}: LoRA {list(w.down.shape)} -> {list(w.up.shape)}, "
                 f"the model's weight is {list(shape)})")
    widths = {name: w.down.shape[1] for name, w in layers.items()}
    lora_arch = guess(layers, widths, left_out)
    model_arch = guess(layout.shapes, {n: s[1] for n, s in layout.shapes.items()})
    if lora_arch.differs_from(model_arch):
        text += (f". This is a {fmt} LoRA for {lora_arch.describe()}; the model is {layout.family_name}, "
                 f"{model_arch.describe()}: use a LoRA made for {layout.family_name}")
    elif lora_arch.kind is not None:
        text += (f". The LoRA looks like one for {lora_arch.describe()}, like this {layout.family_name} model, but of "
                 "another size or layout: a LoRA for another base model or architecture?")
    else:
        text += "; a LoRA for another base model or architecture?"
    return text


__all__ = [
    "DEFAULT_FORMAT",
    "FORMATS",
    "Architecture",
    "LoraDoesNotFit",
    "UnknownLoraFormat",
    "detect_format",
    "export",
    "formats_understood",
    "read_layers",
    "to_native",
]
