"""Driftless Save LoRA / Load LoRA: LoRA files in models/loras, safetensors only, written atomically.

Formats (lora/formats): ComfyUI-native (the default), diffusers/PEFT and kohya, both ways, for SD1.x/SD2.x/SDXL,
SD3/SD3.5 and Flux.
"""

from comfy_api.latest import io, ui

from ..lora.formats import DEFAULT_FORMAT, FORMATS
from .validation import CheckedNode

FORMAT_CHOICES = {
    "comfyui": "ComfyUI-native keys: the stock Load LoRA and every Driftless node read it",
    "diffusers": "diffusers/PEFT keys (unet.<module>.lora_A/lora_B; transformer.<module> for SD3 and Flux, fused q/k/v "
                 "split into to_q/to_k/to_v as ai-toolkit writes them) with the adapter config in the metadata: "
                 "pipe.load_lora_weights(file) in diffusers; ComfyUI's Load LoRA reads the SD3/Flux ones too",
    "kohya": "kohya/sd-scripts keys (lora_unet_…, with .alpha; SD3 and Flux with their own layer names, fused q/k/v as "
             "one layer, as sd-scripts writes them): A1111/Forge, kohya's tools, diffusers, ComfyUI",
}
assert set(FORMAT_CHOICES) == set(FORMATS)


class SaveLora(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessSaveLoRA",
            display_name="Driftless Save LoRA",
            category="Driftless/train",
            description=(
                "Writes a LoRA into models/loras as safetensors with metadata (base-model fingerprint, rank, alpha, "
                "steps, prompts, regularizers). ComfyUI-native keys by default (the stock Load LoRA lists and applies "
                "it); diffusers/PEFT or kohya keys to use it in other tools. The file appears whole or not at all."
            ),
            inputs=[
                io.LoraModel.Input("lora", tooltip="A LoRA from Driftless Train LoRA (or any LORA_MODEL)."),
                io.String.Input("filename", default="driftless/my_subject",
                                tooltip="Path under models/loras, without extension; sub-folders are allowed, '..' is not."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name."),
                io.Combo.Input("format", options=list(FORMAT_CHOICES), default=DEFAULT_FORMAT, optional=True,
                               tooltip=" ".join(f"{k}: {v}." for k, v in FORMAT_CHOICES.items())),
                io.Model.Input("model", optional=True,
                               tooltip="The model the LoRA was trained on: needed for the diffusers and kohya formats "
                               "(its layout names the layers) and checks that the LoRA fits it."),
            ],
            outputs=[io.String.Output(display_name="lora_name", tooltip="The name Load LoRA lists the file under.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora, filename, overwrite, format=DEFAULT_FORMAT, model=None) -> io.NodeOutput:
        from ..lora.files import save_lora
        from ..lora.formats import UnknownLoraFormat, detect_format, export
        from ..lora.formats.layout import layout_of
        from ..lora.storage import safe_path
        from .host import lora_folder

        folder = lora_folder()
        path = safe_path(folder, filename, ".safetensors")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: choose another filename or enable overwrite")
        if model is not None:
            lora = export(lora, layout_of(model), format)
        else:
            try:
                current = detect_format(lora)
            except UnknownLoraFormat:
                if format != DEFAULT_FORMAT:
                    raise
                current = format  # another adapter kind ComfyUI passes around (LoHa, …): written as it is
            if current != format:
                raise ValueError(f"this is a {current} LoRA: saving it in the {format} format needs the model it was "
                                 "made for; connect it to the model input (its layout gives the layer names)")
        written = save_lora(lora, folder, filename)
        name = written.relative_to(folder).as_posix()
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name} ({format}, {len(lora)} tensors) in {folder}"))


class LoadLora(CheckedNode):
    checks_itself = ("lora_name",)  # validate_inputs says why a name is refused

    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        names = [n for n in folder_paths.get_filename_list("loras") if n.endswith((".safetensors", ".sft"))]
        return io.Schema(
            node_id="DriftlessLoadLoRA",
            display_name="Driftless Load LoRA",
            category="Driftless/train",
            description=(
                "Reads a LoRA file from models/loras into memory (LORA_MODEL), with its metadata. Safetensors only. "
                "ComfyUI-native, diffusers/PEFT (also a PEFT adapter_model.safetensors with its adapter_config.json) "
                "and kohya files are understood; an unknown layout is refused with the keys it has."
            ),
            inputs=[
                io.Combo.Input("lora_name", options=names, tooltip="A .safetensors file in models/loras."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: convert the LoRA to ComfyUI-native keys for this model now and check "
                               "it fits (which architecture it was made for, if not). Without it, Driftless nodes "
                               "convert when they meet a model; connect it when the LoRA goes to stock nodes."),
            ],
            outputs=[io.LoraModel.Output(display_name="lora", tooltip="The LoRA in memory, for the guider or training.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name, **_) -> bool | str:
        if not str(lora_name).endswith((".safetensors", ".sft")):
            return f"{lora_name}: only safetensors files are loaded"
        return True

    @classmethod
    def execute(cls, lora_name, model=None) -> io.NodeOutput:
        import folder_paths

        from ..lora.files import load_lora
        from ..lora.formats import FORMAT_KEY, detect_format, to_native
        from ..lora.formats.layout import layout_of

        lora = load_lora(folder_paths.get_full_path_or_raise("loras", lora_name))
        try:
            if model is not None:
                return io.NodeOutput(to_native(lora, layout_of(model)))
            lora.metadata[FORMAT_KEY] = detect_format(lora)
        except ValueError as e:
            raise ValueError(f"{lora_name}: {e}") from None
        return io.NodeOutput(lora)
