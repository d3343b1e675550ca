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
    from ..trainers.storage import safe_path

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
