"""Driftless Save LoRA / Load LoRA: LoRA files in models/loras, safetensors only, written atomically."""

from comfy_api.latest import io, ui


class SaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessSaveLoRA",
            display_name="Driftless Save LoRA",
            category="Driftless/train",
            description=(
                "Writes a LoRA into models/loras as safetensors with ComfyUI-native keys (the stock Load LoRA "
                "lists and applies it) and metadata: base-model fingerprint, rank, alpha, steps, prompts and "
                "the regularizers used. The file appears whole or not at all."
            ),
            inputs=[
                io.LoraModel.Input("lora", tooltip="A LoRA from Driftless Train LoRA (or any LORA_MODEL)."),
                io.String.Input("filename", default="driftless/my_subject",
                                tooltip="Path under models/loras, without extension; sub-folders are allowed, '..' is not."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name."),
            ],
            outputs=[io.String.Output(display_name="lora_name", tooltip="The name Load LoRA lists the file under.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora, filename, overwrite) -> io.NodeOutput:
        from ..trainers.lora_files import save_lora
        from ..trainers.storage import safe_path
        from .host import lora_folder

        folder = lora_folder()
        path = safe_path(folder, filename, ".safetensors")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: choose another filename or enable overwrite")
        written = save_lora(lora, folder, filename)
        name = written.relative_to(folder).as_posix()
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved {name} ({len(lora)} tensors) in {folder}"))


class LoadLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        names = [n for n in folder_paths.get_filename_list("loras") if n.endswith((".safetensors", ".sft"))]
        return io.Schema(
            node_id="DriftlessLoadLoRA",
            display_name="Driftless Load LoRA",
            category="Driftless/train",
            description="Reads a LoRA file from models/loras into memory (LORA_MODEL), with its metadata. Safetensors only.",
            inputs=[io.Combo.Input("lora_name", options=names, tooltip="A .safetensors file in models/loras.")],
            outputs=[io.LoraModel.Output(display_name="lora", tooltip="The LoRA in memory, for the guider or training.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        if not str(lora_name).endswith((".safetensors", ".sft")):
            return f"{lora_name}: only safetensors files are loaded"
        return True

    @classmethod
    def execute(cls, lora_name) -> io.NodeOutput:
        import folder_paths

        from ..trainers.lora_files import load_lora

        return io.NodeOutput(load_lora(folder_paths.get_full_path_or_raise("loras", lora_name)))
