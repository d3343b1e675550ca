"""The nodes' seam to the running ComfyUI: model folders, progress in the UI, cancellation."""

import logging
import pathlib
import time


def lora_folder() -> pathlib.Path:
    """The first models/loras folder (where the stock LoraLoader looks)."""
    import folder_paths

    return pathlib.Path(folder_paths.get_folder_paths("loras")[0])


def resolve_in_loras(name: str, kind: str = "name") -> pathlib.Path:
    """models/loras/<name>, refusing anything that would leave the folder."""
    from ..lora.storage import safe_path

    try:
        return safe_path(lora_folder(), name, "")
    except ValueError as e:
        raise ValueError(f"{kind}: {e}") from None


def check_interrupt() -> None:
    """Raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def progress_reporter(node_id, total: int, log_every_s: float = 5.0):
    """on_step callback: the node's progress bar, a loss/it/s/ETA line under the node, and a log line."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total, node_id=node_id)
    server = _prompt_server()
    last_log = [0.0]

    def on_step(step: int, total_steps: int, loss: float, rate: float, model=None) -> None:
        bar.update_absolute(step, total_steps)
        eta = (total_steps - step) / rate if rate > 0 else float("nan")
        text = f"step {step}/{total_steps}  loss {loss:.4f}  {rate:.2f} it/s  ETA {eta:.0f} s"
        if server is not None and hasattr(server, "send_progress_text"):
            server.send_progress_text(text, node_id)
        now = time.perf_counter()
        if now - last_log[0] >= log_every_s or step == total_steps:
            last_log[0] = now
            logging.info("Driftless Train LoRA: %s", text)

    return on_step


def _prompt_server():
    try:
        from server import PromptServer

        return getattr(PromptServer, "instance", None)
    except Exception:  # headless, no server module state
        return None


METRICS_FOLDER = "driftless_metrics"


def register_metrics_folder() -> None:
    """Register models/driftless_metrics with folder_paths (after any paths extra_model_paths.yaml gave it) and
    create it, so users see where CLIP and DINO folders go."""
    import os

    import folder_paths

    path = os.path.join(folder_paths.models_dir, METRICS_FOLDER)
    folder_paths.add_model_folder_path(METRICS_FOLDER, path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only models folder: the other registered paths still work
        pass


def metrics_roots() -> dict[str, list[str]]:
    """Where backbone folders are looked up: {name prefix: folders}. models/driftless_metrics first, then
    ComfyUI's clip_vision folders (listed as 'clip_vision/<name>')."""
    import folder_paths

    register_metrics_folder()
    roots = {"": folder_paths.get_folder_paths(METRICS_FOLDER)}
    if "clip_vision" in folder_paths.folder_names_and_paths:
        roots["clip_vision/"] = folder_paths.get_folder_paths("clip_vision")
    return roots


def load_on_compute_device(module):
    """Load a torch module onto ComfyUI's text-encoder device through its memory manager (as CLIP vision models are),
    so it is offloaded when a diffusion model needs the memory. Returns the ModelPatcher, which the module keeps."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    patcher = getattr(module, "_driftless_patcher", None)
    if patcher is None:
        # ModelPatcher writes model.device, which transformers models expose read-only: patch a plain holder
        holder = torch.nn.Module()
        holder.add_module("backbone", module)
        holder.device = mm.text_encoder_offload_device()
        patcher = comfy.model_patcher.ModelPatcher(holder, load_device=mm.text_encoder_device(),
                                                   offload_device=mm.text_encoder_offload_device())
        object.__setattr__(module, "_driftless_patcher", patcher)
    # whole: plain torch layers cannot run partly offloaded the way comfy.ops layers can
    mm.load_models_gpu([patcher], force_full_load=True)
    return patcher


def save_json_report(data: dict, filename_prefix: str) -> tuple[str, str]:
    """Write a JSON report as <output>/<prefix>_00001_.json (counter like SaveImage); returns (filename, subfolder)."""
    import folder_paths

    from ..metrics.report import write_json_atomic

    output = folder_paths.get_output_directory()
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output)
    filename = f"{name}_{counter:05}_.json"
    write_json_atomic(data, pathlib.Path(folder) / filename)
    return filename, subfolder
