"""Which models Driftless trains, and which of their layers get a LoRA: one table of model families.

Each `Family` row names the ComfyUI model classes (`comfy.supported_models`) the pack trains, what each target
preset means on that family's module tree (a regular expression over module names), its transformer blocks
(for gradient checkpointing) and the modules whose input its blocks later update in place (see adapter.py).
Every other family ComfyUI can build is refused before work, by its class name (`check_supported`).

Presets per family, as people's trainers use them:
- `attention`: the q, k, v and output projections, fused qkv layers whole. On Flux's single-stream blocks the
  attention and the MLP share two layers (linear1 = q, k, v and MLP-in; linear2 = attention-out and MLP-out,
  the parallel block of Dehghani et al. 2023, arXiv:2302.05442, that ComfyUI's SingleStreamBlock cites), so
  `attention` takes both layers whole, MLP part included.
- `attention+ff`: plus the feed-forward layers of the transformer blocks.
- `all linear+conv`: UNets: every Linear and Conv2d except the latent in/out convolutions (LoCon). DiTs: every
  Linear of the transformer blocks, the adaLN modulation layers included, as kohya sd-scripts' Flux and SD3 LoRA
  networks target by default (networks/lora_flux.py: every Linear in DoubleStreamBlock/SingleStreamBlock;
  lora_sd3.py: every Linear of the joint blocks, embedders only on request); the patch embedding and final
  layer (latent in/out) and the timestep/text/guidance embedders are left out.
"""

import re
from dataclasses import dataclass

import torch

TARGET_PRESETS = {
    "attention": "q, k, v and output projections of attention (fused qkv layers whole)",
    "attention+ff": "the attention projections and the transformer blocks' feed-forward layers",
    "all linear+conv": "every Linear and Conv2d of the blocks except the latent in/out layers (LoCon)",
}


@dataclass(frozen=True)
class Family:
    label: str  # what users call it, in messages
    comfy_classes: tuple[str, ...]  # comfy.supported_models classes of this family the pack trains (exact names)
    diffusion_model: str  # the class name of its diffusion model (comfy.ldm), to recognise a bare module tree
    presets: dict  # preset -> regular expression (re.search) a module name must match
    help: dict  # preset -> what it selects on this family, for the node's tooltip and the docs
    blocks: tuple[str, ...]  # module paths of the blocks to checkpoint; "*" = every child
    excluded: str | None = None  # module names no preset targets (re.search)
    inplace_inputs: str | None = None  # modules whose input tensor the caller updates in place afterwards
    blocks_update_inputs: bool = False  # its blocks add into the tensors they were given (x += …)


UNET_LATENT_IO = r"^(input_blocks\.0\.0|out\.2)$"  # read and write the latent channels: LoCon trainers leave them out
FLUX_ATTENTION = r"^double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)$|^single_blocks\.\d+\.linear[12]$"
SD3_ATTENTION = r"^joint_blocks\.\d+\.(context|x)_block\.attn2?\.(qkv|proj)$"

FAMILIES = {
    "unet": Family(
        label="SD1.x/SD2.x/SDXL UNet",
        comfy_classes=("SD15", "SD20", "SDXL", "SDXLRefiner", "SSD1B", "KOALA_700M", "KOALA_1B", "Segmind_Vega"),
        diffusion_model="UNetModel",
        presets={
            "attention": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
            "attention+ff": r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$|\.transformer_blocks\..*ff\.net\.(0\.proj|2)$",
            "all linear+conv": r"",
        },
        help={
            "attention": "attn1 (self) and attn2 (cross) to_q, to_k, to_v, to_out.0",
            "attention+ff": "those and ff.net.0.proj, ff.net.2 of each transformer block",
            "all linear+conv": "every Linear and Conv2d but the latent in/out convolutions (LoCon)",
        },
        blocks=("input_blocks.*.*", "middle_block.*", "output_blocks.*.*"),
        excluded=UNET_LATENT_IO,
    ),
    "sd3": Family(
        label="SD3/SD3.5 MMDiT",
        comfy_classes=("SD3",),
        diffusion_model="OpenAISignatureMMDITWrapper",
        presets={
            "attention": SD3_ATTENTION,
            "attention+ff": SD3_ATTENTION + r"|^joint_blocks\.\d+\.(context|x)_block\.mlp\.fc[12]$",
            "all linear+conv": r"^joint_blocks\.",
        },
        help={
            "attention": "attn.qkv and attn.proj of each joint block's image (x_block) and text (context_block) "
                         "stream, and SD3.5's second image attention attn2",
            "attention+ff": "those and mlp.fc1, mlp.fc2 of both streams",
            "all linear+conv": "every Linear of the joint blocks, adaLN modulation included (not the patch, "
                               "timestep, pooled-text and context embedders, nor the final layer)",
        },
        blocks=("joint_blocks.*",),
    ),
    "flux": Family(
        label="Flux.1",
        comfy_classes=("Flux", "FluxSchnell"),
        diffusion_model="Flux",
        presets={
            "attention": FLUX_ATTENTION,
            "attention+ff": FLUX_ATTENTION + r"|^double_blocks\.\d+\.(img|txt)_mlp\.[02]$",
            "all linear+conv": r"^(double_blocks|single_blocks)\.",
        },
        help={
            "attention": "img_attn and txt_attn qkv and proj of the double-stream blocks, and the single-stream "
                         "blocks' linear1 and linear2 whole (q, k, v and MLP-in, attention-out and MLP-out are "
                         "fused in those two layers, so their MLP part trains too)",
            "attention+ff": "those and img_mlp, txt_mlp of the double-stream blocks",
            "all linear+conv": "every Linear of the double- and single-stream blocks, modulation included (not "
                               "img_in, txt_in, the time/vector/guidance embedders, nor the final layer)",
        },
        blocks=("double_blocks.*", "single_blocks.*"),
        # DoubleStreamBlock/SingleStreamBlock normalise their input, then add into it in place (img += …, x += …)
        inplace_inputs=r"^(double_blocks\.\d+\.(img|txt)_norm[12]|single_blocks\.\d+\.pre_norm)$",
        blocks_update_inputs=True,
    ),
}


class UnsupportedModel(ValueError):
    """A model of a family Driftless does not train or guide (yet)."""


def supported_families() -> str:
    """'SD1.x/SD2.x/SDXL UNet (SD15, SD20, …), SD3/SD3.5 MMDiT (SD3), Flux.1 (Flux, FluxSchnell)'."""
    return ", ".join(f"{f.label} ({', '.join(f.comfy_classes)})" for f in FAMILIES.values())


def comfy_class_name(model_patcher) -> str:
    """The comfy.supported_models class ComfyUI built this MODEL as (its model detection's verdict)."""
    config = getattr(getattr(model_patcher, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else type(getattr(model_patcher, "model", model_patcher)).__name__


def check_supported(model_patcher, action: str = "train a LoRA on") -> Family:
    """The family of a MODEL (a ComfyUI ModelPatcher), or UnsupportedModel naming its ComfyUI class and the
    supported ones. Exact class names: Flux2, FluxInpaint and Chroma subclass or resemble Flux but are other models."""
    name = comfy_class_name(model_patcher)
    for family in FAMILIES.values():
        if name in family.comfy_classes:
            return family
    raise UnsupportedModel(
        f"Driftless cannot {action} this model yet: ComfyUI built it as {name!r} (comfy.supported_models.{name}), "
        f"a family the pack does not support. Supported: {supported_families()}. Connect a model of one of those "
        "families."
    )


def family_of(diffusion_model: torch.nn.Module) -> Family | None:
    """The family whose diffusion-model class this module tree is (or derives from), else None."""
    names = [cls.__name__ for cls in type(diffusion_model).__mro__]
    for name in names:
        for family in FAMILIES.values():
            if family.diffusion_model == name:
                return family
    return None


def select_targets(diffusion_model: torch.nn.Module, preset: str) -> dict[str, torch.nn.Module]:
    """{module name within diffusion_model: module} for the preset on this model's family, in module order.

    Only nn.Linear and groups=1, zero-padded nn.Conv2d layers are eligible: those have an exact
    activation-space LoRA (see adapter.py).
    """
    if preset not in TARGET_PRESETS:
        raise ValueError(f"unknown target preset {preset!r}; choose one of {list(TARGET_PRESETS)}")
    family = family_of(diffusion_model)
    if family is None:
        raise UnsupportedModel(
            f"Driftless has no target presets for a {type(diffusion_model).__name__} diffusion model; "
            f"supported: {supported_families()}")
    wanted = re.compile(family.presets[preset])
    excluded = re.compile(family.excluded) if family.excluded else None
    chosen = {
        name: module for name, module in diffusion_model.named_modules()
        if name and is_supported_layer(module) and wanted.search(name) and not (excluded and excluded.search(name))
    }
    if not chosen:
        raise ValueError(
            f"target preset {preset!r} matched no layer of this {family.label} model "
            f"({type(diffusion_model).__name__}; on this family it means: {family.help[preset]}); "
            f"pick another preset, e.g. 'all linear+conv'"
        )
    return chosen


def inplace_input_modules(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of this model whose input its own code updates in place after the call (Flux's block norms)."""
    family = family_of(diffusion_model)
    if family is None or not family.inplace_inputs:
        return []
    pattern = re.compile(family.inplace_inputs)
    return [m for n, m in diffusion_model.named_modules() if pattern.search(n)]


def checkpoint_blocks(diffusion_model: torch.nn.Module) -> tuple[list[torch.nn.Module], bool]:
    """The blocks to recompute in backward (UNet: each layer of every stage; DiTs: each transformer block), in the
    order the forward runs them, and whether those blocks update their input tensors in place. An unknown family has
    none."""
    family = family_of(diffusion_model)
    if family is None:
        return [], False
    blocks = []
    for path in family.blocks:
        level = [diffusion_model]
        for part in path.split("."):
            level = [c for m in level for c in m.children()] if part == "*" else \
                [getattr(m, part) for m in level if hasattr(m, part)]
        blocks += level
    return blocks, family.blocks_update_inputs


def describe_presets() -> str:
    """The target presets and what each means on every family (the Train LoRA node's tooltip)."""
    lines = []
    for preset in TARGET_PRESETS:
        per_family = "; ".join(f"{f.label}: {f.help[preset]}" for f in FAMILIES.values())
        lines.append(f"{preset}: {per_family}.")
    return " ".join(lines)


def is_supported_layer(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, torch.nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False
