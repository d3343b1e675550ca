"""diffusers/PEFT LoRA keys: what `pipe.load_lora_weights` and `<model>.load_lora_adapter` read.

    <component>.<diffusers module>.lora_A.weight   A  [r, in] or [r, in, kh, kw]   (PEFT's lora_A = our down)
    <component>.<diffusers module>.lora_B.weight   B  [out, r] or [out, r, 1, 1]   (PEFT's lora_B = our up)

<component> is `unet` for SD1.x/SD2.x/SDXL (`UNet2DConditionModel`: down_blocks.…, mid_block.…, up_blocks.…)
and `transformer` for SD3 (`SD3Transformer2DModel`) and Flux (`FluxTransformer2DModel`: transformer_blocks.…,
single_transformer_blocks.…), as diffusers' pipelines and ai-toolkit write them. The scale is PEFT's
lora_alpha / r (lora_alpha / √r with use_rslora), taken from the adapter config (a peft `LoraConfig` as a dict):
- written and read as the safetensors metadata entry `lora_adapter_metadata` (JSON, keys prefixed
  `unet.` / `transformer.`), which diffusers ≥ 0.34 writes with `save_lora_weights(...,
  unet_lora_adapter_metadata=…)` (`transformer_lora_adapter_metadata=…`) and reads in `load_lora_weights` /
  `load_lora_adapter`; one file holds everything;
- read from an `adapter_config.json` beside an `adapter_model.safetensors` (a PEFT `save_pretrained`
  folder, keys `base_model.model.<module>.lora_A.weight`), which `load_lora` puts in the metadata as
  `adapter_config`;
- read from per-layer `<module>.alpha` keys where a file has them (kohya-converted Flux files);
- without any of these, lora_alpha = r for every layer (scale 1), as diffusers assumes.
Per-layer exceptions are PEFT's rank_pattern / alpha_pattern, matched the way peft matches them
(`peft.utils.other.get_pattern_key`: the pattern is a regex for the end of the module name).

On SD3 and Flux one ComfyUI layer may be several diffusers layers (fused q/k/v; Flux's single-block linear1 is
q, k, v and the MLP input; the final modulation with its halves swapped): the export writes each with the
layer's A and its block of B's rows (exact), the import joins them back (layers.join_rows; the layout says
which rows each holds). Transformer exports carry scale 1 (alpha = r, the scale folded into B where alpha
differs from the rank): ComfyUI's loader reads these files but not the PEFT config, and diffusers' SD3 loader
takes no per-layer alphas, so a file every reader applies alike cannot rely on alpha there.
"""

import json
import math
import re

from .layers import LayerWeights, common_value, group_keys, layer_from_parts, split_rows

NAME = "diffusers"
DESCRIPTION = ("diffusers/PEFT 'unet.<diffusers module>.lora_A.weight' / '.lora_B.weight' ('transformer.…' for SD3 "
               "and Flux, as ai-toolkit writes them too) with the adapter config (also 'base_model.model.…' and "
               "unprefixed PEFT keys)")
PREFIX = "unet."  # the UNet families'; SD3's and Flux's is "transformer." (layout.diffusers_component)
COMPONENT_PREFIXES = ("unet.", "transformer.")
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
KEY = re.compile(r"^(?:unet\.base_model\.model\.|base_model\.model\.|unet\.|transformer\.)?"
                 r"(?P<name>.+)\.(?P<part>lora_A|lora_B)(?:\.default)?\.weight$")
ALPHA_KEY = re.compile(r"^(?:unet\.base_model\.model\.|base_model\.model\.|unet\.|transformer\.)?"
                       r"(?P<name>.+)\.(?P<part>alpha)$")
TEXT_ENCODER = re.compile(r"^(text_encoder(_\d)?|te\d?)\.")


def classify(key: str) -> str | None:
    """'lora' for a diffusion-model layer's A/B, 'extra' for a per-layer alpha, 'ignored' for text-encoder layers."""
    if TEXT_ENCODER.match(key) and (KEY.match(key) or ALPHA_KEY.match(key)):
        return "ignored"
    if KEY.match(key):
        return "lora"
    if ALPHA_KEY.match(key) and not key.startswith(("diffusion_model.", "lora_")):
        return "extra"
    return None


def adapter_config(metadata: dict) -> dict:
    """The diffusion model's LoraConfig fields from the file's metadata (diffusers' entry, or a PEFT adapter_config)."""
    raw = metadata.get(METADATA_KEY)
    if isinstance(raw, str):
        raw = json.loads(raw)
    if raw:
        config = {}
        for key, value in raw.items():
            prefix = next((p for p in COMPONENT_PREFIXES if key.startswith(p)), None)
            if prefix is not None or "." not in key:
                config[key.removeprefix(prefix or "")] = value
        return config
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


def module_names(layout) -> dict:
    """diffusers names (a ComfyUI module, or (module, DiffusersPart) for a block of a fused layer's rows), and
    ComfyUI's own names with PEFT suffixes (`diffusion_model.<layer>.lora_A.weight`, the generic layout
    ComfyUI's loader also accepts)."""
    names = {name: (module if part.start == 0 and part.rows == layout.shapes[module][0] and not part.swap_halves
                    else (module, part))
             for name, (module, part) in layout.diffusers_part_names().items()}
    return {**names, **{f"diffusion_model.{m}": m for m in layout.shapes}}


def write(layers: dict[str, LayerWeights], layout) -> tuple[dict, dict[str, str]]:
    """PEFT keys with the model's component prefix (`unet.`, `transformer.`), and the LoraConfig in the
    metadata the way diffusers saves it. A fused layer becomes its diffusers layers (split_rows)."""
    component = getattr(layout, "diffusers_component", "unet")
    prefix = f"{component}."
    tensors, ranks, alphas = {}, {}, {}
    for module, w in layers.items():
        parts = layout.diffusers_parts(module)
        blocks = [(p.start, p.rows, p.swap_halves) for p in parts]
        for part, pw in zip(parts, split_rows(w, blocks, fold_scale=component != "unet")):
            if len(parts) == 1 and not part.swap_halves and pw.alpha == w.alpha:
                pw = w  # the layer's own tensors, bit for bit
            tensors[f"{prefix}{part.name}.lora_A.weight"] = pw.down
            tensors[f"{prefix}{part.name}.lora_B.weight"] = pw.up
            ranks[part.name], alphas[part.name] = pw.rank, pw.alpha
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
    packed = {f"{prefix}{k}": v for k, v in config.items()}
    return tensors, {METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
