"""diffusers/PEFT LoRA keys: what `pipe.load_lora_weights` and `UNet2DConditionModel.load_lora_adapter` read.

    unet.<diffusers module>.lora_A.weight   A  [r, in] or [r, in, kh, kw]   (PEFT's lora_A = our down)
    unet.<diffusers module>.lora_B.weight   B  [out, r] or [out, r, 1, 1]   (PEFT's lora_B = our up)

<diffusers module> is the module's name in diffusers' `UNet2DConditionModel` (down_blocks.…, mid_block.…,
up_blocks.…). The scale is PEFT's lora_alpha / r (lora_alpha / √r with use_rslora), taken from the
adapter config (a peft `LoraConfig` as a dict):
- written and read as the safetensors metadata entry `lora_adapter_metadata` (JSON, keys prefixed
  `unet.`), which diffusers ≥ 0.34 writes with `save_lora_weights(..., unet_lora_adapter_metadata=…)` and
  reads in `load_lora_weights` / `load_lora_adapter`; one file holds everything;
- read from an `adapter_config.json` beside an `adapter_model.safetensors` (a PEFT `save_pretrained`
  folder, keys `base_model.model.<module>.lora_A.weight`), which `load_lora` puts in the metadata as
  `adapter_config`;
- without either, lora_alpha = r for every layer (scale 1), as diffusers assumes.
Per-layer exceptions are PEFT's rank_pattern / alpha_pattern, matched the way peft matches them
(`peft.utils.other.get_pattern_key`: the pattern is a regex for the end of the module name).
"""

import json
import math
import re

from .layers import LayerWeights, common_value, group_keys, layer_from_parts

NAME = "diffusers"
DESCRIPTION = ("diffusers/PEFT 'unet.<diffusers module>.lora_A.weight' / '.lora_B.weight' with the adapter config "
               "(also 'base_model.model.…' and unprefixed PEFT keys)")
PREFIX = "unet."
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
KEY = re.compile(r"^(?:unet\.base_model\.model\.|base_model\.model\.|unet\.)?"
                 r"(?P<name>.+)\.(?P<part>lora_A|lora_B)(?:\.default)?\.weight$")
ALPHA_KEY = re.compile(r"^(?:unet\.base_model\.model\.|base_model\.model\.|unet\.)?(?P<name>.+)\.(?P<part>alpha)$")
TEXT_ENCODER = re.compile(r"^(text_encoder(_\d)?|te\d?)\.")


def classify(key: str) -> str | None:
    """'lora' for a UNet layer's A/B, 'extra' for a per-layer alpha, 'ignored' for text-encoder layers."""
    if TEXT_ENCODER.match(key) and (KEY.match(key) or ALPHA_KEY.match(key)):
        return "ignored"
    if KEY.match(key):
        return "lora"
    if ALPHA_KEY.match(key) and not key.startswith(("diffusion_model.", "lora_")):
        return "extra"
    return None


def adapter_config(metadata: dict) -> dict:
    """The UNet's LoraConfig fields from the file's metadata (diffusers' entry, or a PEFT adapter_config)."""
    raw = metadata.get(METADATA_KEY)
    if isinstance(raw, str):
        raw = json.loads(raw)
    if raw:
        return {k.removeprefix(PREFIX): v for k, v in raw.items() if k.startswith(PREFIX) or "." not in k}
    return dict(metadata.get("adapter_config") or {})


def pattern_value(patterns: dict, module: str, default):
    """peft's get_pattern_key: the first pattern that matches the end of the module name."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def read(tensors: dict, metadata: dict) -> dict[str, LayerWeights]:
    """{diffusers module name: weights}, alpha converted to the alpha/r convention."""
    config = adapter_config(metadata)
    for flag, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA with bias terms")):
        if config.get(flag):
            raise ValueError(f"this PEFT adapter uses {what} ({flag}=true): only plain LoRA is supported")
    lora_keys = {k: v for k, v in tensors.items() if not TEXT_ENCODER.match(k)}
    grouped, _ = group_keys(lora_keys, KEY)
    alphas, _ = group_keys(lora_keys, ALPHA_KEY)
    layers = {}
    for name, parts in grouped.items():
        rank = parts["lora_A"].shape[0] if "lora_A" in parts else None
        if name in alphas:
            alpha = float(alphas[name]["alpha"])  # an explicit per-layer alpha (some converters write one)
        else:
            alpha = pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", rank))
            if alpha is not None and config.get("use_rslora") and rank:
                alpha = float(alpha) * math.sqrt(rank)  # rsLoRA scales by alpha/√r = (alpha·√r)/r
        layers[name] = layer_from_parts(name, parts, "lora_A", "lora_B", alpha=None if alpha is None else float(alpha))
    return layers


def module_names(layout) -> dict[str, str]:
    """diffusers names, and ComfyUI's own names with PEFT suffixes (`diffusion_model.<layer>.lora_A.weight`,
    the generic layout ComfyUI's loader also accepts)."""
    return {**layout.from_diffusers(), **{f"diffusion_model.{m}": m for m in layout.shapes}}


def write(layers: dict[str, LayerWeights], layout) -> tuple[dict, dict[str, str]]:
    """PEFT keys with the `unet.` prefix, and the LoraConfig in the metadata the way diffusers saves it."""
    tensors, ranks, alphas = {}, {}, {}
    for module, w in layers.items():
        name = layout.diffusers_name(module)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = w.down
        tensors[f"{PREFIX}{name}.lora_B.weight"] = w.up
        ranks[name], alphas[name] = w.rank, w.alpha
    r, alpha = common_value(ranks), common_value(alphas)
    config = {
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": sorted(ranks),
        "rank_pattern": {n: v for n, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {n: v for n, v in sorted(alphas.items()) if v != alpha},
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }
    packed = {f"{PREFIX}{k}": v for k, v in config.items()}
    return tensors, {METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
