"""kohya (sd-scripts) LoRA keys: what A1111/Forge, kohya's own tools, ComfyUI and diffusers all read.

    lora_unet_<module with _ for .>.lora_down.weight   A  [r, in] or [r, in, kh, kw]
    lora_unet_<module with _ for .>.lora_up.weight     B  [out, r] or [out, r, 1, 1]
    lora_unet_<module with _ for .>.alpha              scalar; scale = alpha / r (absent: alpha = r)

<module> is the diffusers name for SD1.x/SD2.x (sd-scripts trains a diffusers UNet there), the original
LDM name for SDXL (sd-scripts' SDXL UNet keeps those), and ComfyUI's own name for SD3 and Flux (SAI's MMDiT
and BFL's Flux names, which sd-scripts and ai-toolkit's kohya-style files use: fused q/k/v stays one layer,
`lora_unet_double_blocks_0_img_attn_qkv`, `lora_unet_single_blocks_0_linear1`); `_` for `.` cannot be undone
by string replacement, so both directions go through ComfyUI's own key map (`comfy.lora.model_lora_keys_unet`,
see layout.py). Text-encoder layers (`lora_te_`, `lora_te1_`, `lora_te2_`) are not part of a diffusion-model
adapter: they are reported and left out. Metadata follows sd-scripts (`ss_network_module`,
`ss_network_dim`, `ss_network_alpha`, `ss_base_model_version`, and `conv_dim`/`conv_alpha` in
`ss_network_args` when convolutions are adapted, as LoCon writes them; for Flux `networks.lora_flux` and
`flux1`, for SD3 `networks.lora_sd3`, the network modules sd-scripts trains them with).
"""

import json
import re

from .layers import LayerWeights, common_value, down_up_alpha_tensors, read_down_up_alpha

NAME = "kohya"
DESCRIPTION = "kohya/sd-scripts 'lora_unet_<module>.lora_down.weight' / '.lora_up.weight' / '.alpha'"
KEY = re.compile(r"^(?P<name>lora_unet_[^.]+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
TEXT_ENCODER = re.compile(r"^lora_te\d?_[^.]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
BASE_MODEL_VERSION = {"SD15": "sd_v1", "SD20": "sd_v2", "SDXL": "sdxl_base_v1-0", "Flux": "flux1",
                      "FluxSchnell": "flux1"}
MODELSPEC_ARCHITECTURE = {"SD15": "stable-diffusion-v1", "SD20": "stable-diffusion-v2-768-v",
                          "SDXL": "stable-diffusion-xl-v1-base", "Flux": "flux-1-dev", "FluxSchnell": "flux-1-schnell"}
NETWORK_MODULE = {"Flux": "networks.lora_flux", "FluxSchnell": "networks.lora_flux", "SD3": "networks.lora_sd3"}


def classify(key: str) -> str | None:
    if KEY.match(key):
        return "lora"
    if TEXT_ENCODER.match(key):
        return "ignored"
    return None


def read(tensors: dict, metadata: dict) -> dict[str, LayerWeights]:
    """{`lora_unet_…` stem: weights}."""
    return read_down_up_alpha(tensors, KEY)


def module_names(layout) -> dict[str, str]:
    return dict(layout.kohya_names)


def write(layers: dict[str, LayerWeights], layout) -> tuple[dict, dict[str, str]]:
    tensors, linear, conv = {}, {}, {}
    for module, w in layers.items():
        tensors.update(down_up_alpha_tensors(layout.kohya_name(module), w))
        # sd-scripts' network_dim covers linear and 1x1 layers, conv_dim the kxk convolutions
        (conv if w.down.ndim == 4 and w.down.shape[2:] != (1, 1) else linear)[module] = w
    metadata = {"ss_network_module": NETWORK_MODULE.get(layout.family, "networks.lora")}
    if linear:
        metadata["ss_network_dim"] = str(common_value({m: w.rank for m, w in linear.items()}))
        metadata["ss_network_alpha"] = _number(common_value({m: w.alpha for m, w in linear.items()}))
    if conv:
        args = {"conv_dim": str(common_value({m: w.rank for m, w in conv.items()})),
                "conv_alpha": _number(common_value({m: w.alpha for m, w in conv.items()}))}
        metadata["ss_network_args"] = json.dumps(args)
    if layout.family in BASE_MODEL_VERSION:
        metadata["ss_base_model_version"] = BASE_MODEL_VERSION[layout.family]
        metadata["modelspec.architecture"] = f"{MODELSPEC_ARCHITECTURE[layout.family]}/lora"
        metadata["modelspec.sai_model_spec"] = "1.0.0"
    return tensors, metadata


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
