"""A model's layer names in every convention a LoRA file may use, read from ComfyUI's own key maps.

The format converters are plain key/tensor mappings; what they need to know about the model is here:
- the ComfyUI module names (what native LoRA keys and the adapter hooks use) and their weight shapes;
- the diffusers `UNet2DConditionModel` name of each module, from `comfy.utils.unet_to_diffusers`
  (the map ComfyUI itself uses to load diffusers UNets);
- every `lora_unet_…` spelling ComfyUI's LoRA loader accepts for a module, from
  `comfy.lora.model_lora_keys_unet` (kohya files: diffusers names for SD1.x/SD2.x, the original LDM
  names for SDXL, each with `_` for `.`, which cannot be undone by string replacement alone).

`UnetLayout` is plain data, so the converters are testable without ComfyUI; `layout_of` is the one
place that reads a ComfyUI model.
"""

from dataclasses import dataclass, field

# ComfyUI's supported-model class names, as users know them
FAMILY_NAMES = {
    "SD15": "SD1.5", "SD20": "SD2.x", "SD21UnclipL": "SD2.1 unCLIP", "SD21UnclipH": "SD2.1 unCLIP",
    "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner", "SSD1B": "SSD-1B", "Segmind_Vega": "Segmind Vega",
    "SD3": "SD3", "Flux": "Flux", "FluxSchnell": "Flux schnell", "AuraFlow": "AuraFlow", "HunyuanDiT": "Hunyuan-DiT",
}


@dataclass(frozen=True)
class UnetLayout:
    """One model's LoRA-able layers and their names in each file convention."""

    family: str  # ComfyUI's name of the model family (its supported-model class): "SD15", "SDXL", …
    shapes: dict[str, tuple[int, ...]]  # ComfyUI module name (inside diffusion_model) -> weight shape
    diffusers_names: dict[str, str] = field(default_factory=dict)  # ComfyUI module -> diffusers UNet module
    kohya_names: dict[str, str] = field(default_factory=dict)  # "lora_unet_…" stem -> ComfyUI module
    kohya_spelling: str = "diffusers"  # what kohya's sd-scripts writes for this family: "diffusers" or "ldm"

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family, self.family)

    def from_diffusers(self) -> dict[str, str]:
        """diffusers module name -> ComfyUI module name."""
        return {d: c for c, d in self.diffusers_names.items()}

    def diffusers_name(self, module: str) -> str:
        if module not in self.diffusers_names:
            raise ValueError(f"layer {module} of this {self.family_name} model has no diffusers name "
                             "(diffusers and kohya exports cover SD1.x/SD2.x/SDXL-style UNets)")
        return self.diffusers_names[module]

    def kohya_name(self, module: str) -> str:
        """The `lora_unet_…` stem kohya's sd-scripts would write for this module."""
        name = self.diffusers_name(module) if self.kohya_spelling == "diffusers" else module
        stem = "lora_unet_" + name.replace(".", "_")
        if self.kohya_names and self.kohya_names.get(stem) != module:
            raise ValueError(f"layer {module}: {stem} does not name it in ComfyUI's key map")
        return stem


def layout_of(model) -> UnetLayout:
    """The layout of a ComfyUI model (a ModelPatcher or its BaseModel)."""
    import comfy.lora
    import comfy.model_base
    import comfy.utils
    import torch

    base = getattr(model, "model", model)
    diffusion_model = base.diffusion_model
    shapes = {
        name: tuple(module.weight.shape)
        for name, module in diffusion_model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and getattr(module, "weight", None) is not None
    }
    unet_config = base.model_config.unet_config
    diffusers_names = {}
    # label_emb is class_embedding in class-conditional UNets and add_embedding in SDXL's
    embedding = "add_embedding" if unet_config.get("num_classes") == "sequential" else "class_embedding"
    for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        module, diffusers_module = comfy_key[: -len(".weight")], diffusers_key[: -len(".weight")]
        if module not in shapes:
            continue
        if module.startswith("label_emb.") and not diffusers_module.startswith(embedding):
            continue
        diffusers_names[module] = diffusers_module
    kohya_names = {}
    for stem, target in comfy.lora.model_lora_keys_unet(base, {}).items():
        if isinstance(target, str) and stem.startswith("lora_unet_") and target.startswith("diffusion_model."):
            module = target[len("diffusion_model."):].removesuffix(".weight")
            if module in shapes:
                kohya_names[stem] = module
    sdxl = isinstance(base, (comfy.model_base.SDXL, comfy.model_base.SDXLRefiner))
    return UnetLayout(
        family=type(base.model_config).__name__,
        shapes=shapes,
        diffusers_names=diffusers_names,
        kohya_names=kohya_names,
        kohya_spelling="ldm" if sdxl else "diffusers",
    )
