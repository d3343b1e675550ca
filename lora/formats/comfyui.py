"""ComfyUI-native LoRA keys (the default): what LoraLoader, the LORA_MODEL socket and our adapters read.

    diffusion_model.<module>.lora_down.weight   A  [r, in] or [r, in, kh, kw]
    diffusion_model.<module>.lora_up.weight     B  [out, r] or [out, r, 1, 1]
    diffusion_model.<module>.alpha              scalar; scale = alpha / r (absent: alpha = r)

<module> is the module's name inside ComfyUI's diffusion model: LDM names for UNets, SAI's MMDiT names for
SD3 (`joint_blocks.0.x_block.attn.qkv`), BFL's for Flux (`double_blocks.0.img_attn.qkv`); a fused q/k/v
projection is one layer.
"""

import re

from .layers import LayerWeights, down_up_alpha_tensors, read_down_up_alpha

NAME = "comfyui"
DESCRIPTION = "ComfyUI-native 'diffusion_model.<module>.lora_down.weight' / '.lora_up.weight' / '.alpha' (the default)"
PREFIX = "diffusion_model."
KEY = re.compile(r"^diffusion_model\.(?P<name>.+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
# other patch kinds ComfyUI's loader applies (full diffs of biases and norms, as its own trainer writes):
# not LoRA layers, so not part of an adapter; reported, not applied
OTHER_PATCHES = re.compile(r"^diffusion_model\..+\.(diff|diff_b|set_weight|w_norm|b_norm)$")


def classify(key: str) -> str | None:
    if KEY.match(key):
        return "lora"
    if OTHER_PATCHES.match(key):
        return "ignored"
    return None


def read(tensors: dict, metadata: dict) -> dict[str, LayerWeights]:
    """{ComfyUI module name: weights}."""
    return read_down_up_alpha(tensors, KEY)


def module_names(layout) -> dict[str, str]:
    return {name: name for name in layout.shapes}


def write(layers: dict[str, LayerWeights], layout) -> tuple[dict, dict[str, str]]:
    tensors = {}
    for module, w in layers.items():
        tensors.update(down_up_alpha_tensors(f"{PREFIX}{module}", w))
    return tensors, {}
