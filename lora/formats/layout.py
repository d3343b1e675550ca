"""A model's layer names in every convention a LoRA file may use, read from ComfyUI's own key maps.

The format converters are plain key/tensor mappings; what they need to know about the model is here:
- the ComfyUI module names (what native LoRA keys and the adapter hooks use) and their weight shapes;
- the diffusers name of each module, from the maps ComfyUI itself uses to load diffusers checkpoints:
  `comfy.utils.unet_to_diffusers` (`UNet2DConditionModel`, SD1.x/SD2.x/SDXL), `mmdit_to_diffusers`
  (`SD3Transformer2DModel`) and `flux_to_diffusers` (`FluxTransformer2DModel`). On the transformers one
  ComfyUI layer can be several diffusers layers: a fused q/k/v projection (SD3's `attn.qkv`, Flux's
  `img_attn.qkv` / `txt_attn.qkv`) is diffusers' separate `to_q` / `to_k` / `to_v` (`add_q_proj` … on the
  text stream), Flux's single-block `linear1` is `to_q` / `to_k` / `to_v` / `proj_mlp`: each is a block of
  output rows (`DiffusersPart`). The final modulation (and SD3's last text-stream modulation) is the same
  layer with its (shift, scale) halves in the other order (`swap_halves`);
- every `lora_unet_…` spelling ComfyUI's LoRA loader accepts for a module, from
  `comfy.lora.model_lora_keys_unet` (kohya files: diffusers names for SD1.x/SD2.x, the original LDM
  names for SDXL, BFL's names for Flux and SAI's for SD3 (as sd-scripts writes them), each with `_` for
  `.`, which cannot be undone by string replacement alone).

`ModelLayout` is plain data, so the converters are testable without ComfyUI; `layout_of` is the one
place that reads a ComfyUI model.
"""

import re
from dataclasses import dataclass, field
from typing import NamedTuple

# ComfyUI's supported-model class names, as users know them
FAMILY_NAMES = {
    "SD15": "SD1.5", "SD20": "SD2.x", "SD21UnclipL": "SD2.1 unCLIP", "SD21UnclipH": "SD2.1 unCLIP",
    "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner", "SSD1B": "SSD-1B", "Segmind_Vega": "Segmind Vega",
    "SD3": "SD3/SD3.5", "Flux": "Flux", "FluxSchnell": "Flux schnell", "AuraFlow": "AuraFlow", "HunyuanDiT": "Hunyuan-DiT",
}


# the diffusion-model component a diffusers pipeline loads LoRA layers into (the key prefix of its files)
UNET, TRANSFORMER = "unet", "transformer"
# other names ComfyUI's maps accept for a layer that already has its Flux.1 name: LyCORIS' LoKr names of the
# feed-forward layers, Flux 2's fused single-block names; never written, so left out
DIFFUSERS_ALIASES = re.compile(r"(\.linear_in|\.linear_out|\.to_qkv_mlp_proj|^single_transformer_blocks\.\d+\.attn\.to_out)$")


class DiffusersPart(NamedTuple):
    """A diffusers layer that is a block of output rows of a ComfyUI layer."""

    name: str  # diffusers module name
    start: int  # its first row in the ComfyUI layer's output
    rows: int  # how many rows
    swap_halves: bool = False  # diffusers orders the two halves of these rows the other way ((scale, shift))


@dataclass(frozen=True)
class ModelLayout:
    """One model's LoRA-able layers and their names in each file convention."""

    family: str  # ComfyUI's name of the model family (its supported-model class): "SD15", "SDXL", "Flux", …
    shapes: dict[str, tuple[int, ...]]  # ComfyUI module name (inside diffusion_model) -> weight shape
    diffusers_names: dict[str, str] = field(default_factory=dict)  # ComfyUI module -> diffusers module (same rows)
    kohya_names: dict[str, str] = field(default_factory=dict)  # "lora_unet_…" stem -> ComfyUI module
    kohya_spelling: str = "diffusers"  # what kohya's sd-scripts writes for this family: "diffusers" or "ldm"
    # ComfyUI module -> the diffusers layers holding its rows, in row order (fused q/k/v; swapped halves)
    diffusers_splits: dict[str, tuple[DiffusersPart, ...]] = field(default_factory=dict)
    diffusers_component: str = UNET  # "unet" (UNet2DConditionModel) or "transformer" (SD3, Flux)

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES.get(self.family, self.family)

    def from_diffusers(self) -> dict[str, str]:
        """diffusers module name -> ComfyUI module name, for layers that are one diffusers layer each."""
        return {d: c for c, d in self.diffusers_names.items()}

    def diffusers_part_names(self) -> dict[str, tuple[str, DiffusersPart]]:
        """Every diffusers module name -> (ComfyUI module, the rows it holds), whole layers included."""
        out = {d: (c, DiffusersPart(d, 0, self.shapes[c][0])) for c, d in self.diffusers_names.items()}
        for module, parts in self.diffusers_splits.items():
            out.update({part.name: (module, part) for part in parts})
        return out

    def diffusers_parts(self, module: str) -> tuple[DiffusersPart, ...]:
        """The diffusers layers that hold `module`'s output rows, in row order (one for most layers)."""
        if module in self.diffusers_splits:
            return self.diffusers_splits[module]
        return (DiffusersPart(self.diffusers_name(module), 0, self.shapes[module][0]),)

    def diffusers_name(self, module: str) -> str:
        if module not in self.diffusers_names:
            if module in self.diffusers_splits:
                raise ValueError(f"layer {module} of this {self.family_name} model is several diffusers layers: "
                                 f"{', '.join(p.name for p in self.diffusers_splits[module])}")
            raise ValueError(f"layer {module} of this {self.family_name} model has no diffusers name "
                             "(diffusers and kohya exports cover SD1.x/SD2.x/SDXL-style UNets, SD3 and Flux)")
        return self.diffusers_names[module]

    def kohya_name(self, module: str) -> str:
        """The `lora_unet_…` stem kohya's sd-scripts would write for this module."""
        name = self.diffusers_name(module) if self.kohya_spelling == "diffusers" else module
        stem = "lora_unet_" + name.replace(".", "_")
        if self.kohya_names and self.kohya_names.get(stem) != module:
            raise ValueError(f"layer {module}: {stem} does not name it in ComfyUI's key map")
        return stem


UnetLayout = ModelLayout  # the name from before the transformer families


def layout_of(model) -> ModelLayout:
    """The layout of a ComfyUI model (a ModelPatcher or its BaseModel)."""
    import comfy.lora
    import comfy.model_base
    import torch

    base = getattr(model, "model", model)
    diffusion_model = base.diffusion_model
    shapes = {
        name: tuple(module.weight.shape)
        for name, module in diffusion_model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and getattr(module, "weight", None) is not None
    }
    unet_config = base.model_config.unet_config
    diffusers_splits, component = {}, UNET
    if isinstance(base, (comfy.model_base.SD3, comfy.model_base.Flux)):
        diffusers_names, diffusers_splits = _transformer_names(base, shapes)
        component = TRANSFORMER
    else:
        diffusers_names = _unet_names(unet_config, shapes)
    kohya_names = {}
    for stem, target in comfy.lora.model_lora_keys_unet(base, {}).items():
        if isinstance(target, str) and stem.startswith("lora_unet_") and target.startswith("diffusion_model."):
            module = target[len("diffusion_model."):].removesuffix(".weight")
            if module in shapes:
                kohya_names[stem] = module
    # sd-scripts' SDXL UNet keeps the LDM names, and its SD3/Flux models are SAI's/BFL's: ComfyUI's names
    ldm = isinstance(base, (comfy.model_base.SDXL, comfy.model_base.SDXLRefiner)) or component == TRANSFORMER
    return ModelLayout(
        family=type(base.model_config).__name__,
        shapes=shapes,
        diffusers_names=diffusers_names,
        kohya_names=kohya_names,
        kohya_spelling="ldm" if ldm else "diffusers",
        diffusers_splits=diffusers_splits,
        diffusers_component=component,
    )


def _unet_names(unet_config: dict, shapes: dict) -> dict[str, str]:
    """ComfyUI module -> UNet2DConditionModel module, from `comfy.utils.unet_to_diffusers`."""
    import comfy.utils

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
    return diffusers_names


def _transformer_names(base, shapes: dict) -> tuple[dict[str, str], dict[str, tuple[DiffusersPart, ...]]]:
    """Whole-layer names and row-block parts of SD3's or Flux's layers, from ComfyUI's own diffusers maps.

    An entry of those maps is a ComfyUI key, (key, (dim, start, size)) for a block of rows of a fused layer,
    or (key, None, swap_scale_shift) for a layer whose two halves diffusers orders the other way.
    """
    import comfy.model_base
    import comfy.utils

    unet_config = base.model_config.unet_config
    to_diffusers = comfy.utils.mmdit_to_diffusers if isinstance(base, comfy.model_base.SD3) else comfy.utils.flux_to_diffusers
    names, parts = {}, {}
    for diffusers_key, source in to_diffusers(unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        name = diffusers_key[: -len(".weight")]
        if DIFFUSERS_ALIASES.search(name):
            continue
        key, rows, transform = (source, None, None) if isinstance(source, str) else (*source, None)[:3]
        module = key.removesuffix(".weight")
        if module not in shapes:
            continue  # a layer this model does not have (SD3's last text block has no output projection or MLP)
        if rows is not None:
            dim, start, size = rows
            if dim != 0:
                raise ValueError(f"ComfyUI's diffusers map splits {module} along dimension {dim}: not a LoRA row block")
            parts.setdefault(module, []).append(DiffusersPart(name, start, size))
        elif transform is not None:
            if transform is not comfy.utils.swap_scale_shift:
                raise ValueError(f"ComfyUI's diffusers map transforms {module} with {transform.__name__}: unsupported")
            parts[module] = [DiffusersPart(name, 0, shapes[module][0], swap_halves=True)]
        else:
            names.setdefault(module, name)  # the first name is Flux.1's; later ones are other tools' aliases
    splits = {}
    for module, found in parts.items():
        found = tuple(sorted(found, key=lambda p: p.start))
        ends = [p.start + p.rows for p in found]
        if [p.start for p in found] != [0, *ends[:-1]] or ends[-1] != shapes[module][0]:
            raise ValueError(f"the diffusers layers of {module} ({', '.join(p.name for p in found)}) do not tile its "
                             f"{shapes[module][0]} output rows")
        splits[module] = found
        names.pop(module, None)
    return names, splits
