"""Run an API-format prompt on the in-process ComfyUI with per-node progress and a list of outputs.

`execution.PromptExecutor` is ComfyUI's own executor, the one the server's queue worker uses; the
`ConsoleServer` below stands in for the server object it reports to, and prints what a web UI would
show: which node runs, step progress inside it, what it wrote, and the failing node's error.
"""

import asyncio
import json
import pathlib
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class RunResult:
    prompt_id: str
    success: bool
    interrupted: bool = False
    outputs: dict = field(default_factory=dict)  # node id -> ui dict, as /history reports it
    files: list[pathlib.Path] = field(default_factory=list)
    error: dict | None = None  # the execution_error message
    seconds: float = 0.0


class ConsoleServer:
    """The attributes and methods of server.PromptServer that the executor and progress hooks touch."""

    def __init__(self, prompt: dict, stream=None, min_progress_interval: float = 0.5):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.prompt = prompt
        self.stream = stream or sys.stdout
        self.messages: list[tuple[str, dict]] = []
        self._order: list[str] = []
        self._node_started = 0.0
        self._last_progress = 0.0
        self._last_value = 0
        self.min_progress_interval = min_progress_interval

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _label(self, node_id) -> str:
        return node_label(self.prompt, node_id)

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))
        if event == "execution_cached" and data.get("nodes"):
            self._print(f"[runner] cached, not rerun: {', '.join(self._label(n) for n in data['nodes'])}")
        elif event == "executing" and data.get("node") is not None:
            self._finish_node()
            self._order.append(str(data["node"]))
            self._node_started = self._last_progress = time.perf_counter()
            self._last_value = 0
            self._print(f"[runner] node {len(self._order)}/{len(self.prompt)}: {self._label(data['node'])}")
        elif event == "progress":
            now = time.perf_counter()
            value, total = data.get("value", 0), data.get("max", 0)
            # the first step (the node's total shows at once), then at most every min_progress_interval and every
            # 1% of the node's steps (a long node prints about 100 lines), and the last step
            due = now - self._last_progress >= self.min_progress_interval and value - self._last_value >= max(1, total // 100)
            if self._last_value == 0 or value >= total or due:
                self._last_progress, self._last_value = now, value
                rate = value / max(now - self._node_started, 1e-9)
                eta = (total - value) / rate if rate > 0 else float("nan")
                self._print(f"[runner]   step {value}/{total}  {rate:.2f} it/s  eta {eta:.1f} s")

    def _finish_node(self) -> None:
        if self._order:
            self._print(f"[runner]   done in {time.perf_counter() - self._node_started:.2f} s")

    def queue_updated(self):
        pass


def node_label(prompt: dict, node_id) -> str:
    """'#12 KSampler (Sample (base))': the id, the class and the title the workflow gave the node."""
    node = prompt.get(str(node_id), {})
    title = node.get("_meta", {}).get("title")
    class_type = node.get("class_type", "?")
    return f"#{node_id} {class_type}" + (f" ({title})" if title and title != class_type else "")


def output_files(outputs: dict, kinds: tuple[str, ...] = ("output", "temp", "input")) -> list[pathlib.Path]:
    """Paths of the files named in the nodes' ui outputs ({filename, subfolder, type} entries) of those types:
    'output' (saved files, reports), 'temp' (previews)."""
    import folder_paths

    files = []
    for ui in outputs.values():
        for entries in ui.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and "filename" in entry and entry.get("type", "output") in kinds:
                    base = folder_paths.get_directory_by_type(entry.get("type", "output"))
                    if base is not None:
                        files.append(pathlib.Path(base, entry.get("subfolder", ""), entry["filename"]))
    return files


def write_demo_assets(workflow_data: dict) -> list[str]:
    """The demo's photos (input folder) and random metric backbones (models folder), written when the workflow names
    them; returns what was written, as lines to show."""
    import folder_paths

    from . import demo_backbones
    from .demo_photos import DEMO_FOLDER, write_demo_photos

    named, messages = json.dumps(workflow_data), []
    if DEMO_FOLDER + "/" in named:
        photos = write_demo_photos(pathlib.Path(folder_paths.get_input_directory()))
        messages.append(f"[runner] demo photos in {photos[0].parent}")
    if any(name in named for name in demo_backbones.NAMES):
        folders = demo_backbones.write_demo_backbones(pathlib.Path(folder_paths.models_dir))
        messages.append(f"[runner] demo metric backbones (random CLIP and DINO: their scores mean nothing) in "
                        f"{folders[0].parent}")
    return messages


def validate(prompt: dict, prompt_id: str) -> tuple[list[str], dict]:
    """ComfyUI's own validation; returns (output node ids, node_errors). Fails on any error at all. Nodes the
    release has removed are first replaced by their successors, as POST /prompt does."""
    import execution

    from .. import comfy_host

    comfy_host.apply_node_replacements(prompt)

    valid, error, good_outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    problems = {}
    if not valid and error:
        problems["prompt"] = error
    problems.update(node_errors or {})
    return good_outputs, problems


def format_validation_errors(problems: dict, prompt: dict) -> str:
    lines = []
    for node_id, err in problems.items():
        if node_id == "prompt":
            lines.append(f"  prompt: {err.get('message')}: {err.get('details', '')}")
            continue
        class_type = err.get("class_type", prompt.get(node_id, {}).get("class_type", "?"))
        for e in err.get("errors", []):
            lines.append(f"  node #{node_id} {class_type}: {e.get('message')}: {e.get('details', '')}")
    return "\n".join(lines)


def _progress_hook(server: ConsoleServer):
    import comfy.model_management
    from comfy_execution.utils import get_executing_context

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        context = get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        server.send_sync("progress", {"value": value, "max": total, "node": node_id, "prompt_id": prompt_id})

    return hook


def execute(prompt: dict, output_nodes: list[str], stream=None, prompt_id: str | None = None) -> RunResult:
    """Execute a validated prompt; Ctrl+C interrupts the running node the way POST /interrupt does."""
    import comfy.model_management
    import comfy.utils

    from .. import comfy_host

    prompt_id = prompt_id or str(uuid.uuid4())
    server = ConsoleServer(prompt, stream)
    comfy.utils.PROGRESS_BAR_ENABLED = False  # our progress lines replace the tqdm bars
    comfy.utils.set_progress_bar_global_hook(_progress_hook(server))
    executor = comfy_host.prompt_executor(server)

    previous = signal.getsignal(signal.SIGINT)
    in_main_thread = _is_main_thread()
    if in_main_thread:
        signal.signal(signal.SIGINT, lambda *_: comfy.model_management.interrupt_current_processing(True))
    start = time.perf_counter()
    try:
        executor.execute(prompt, prompt_id, {"client_id": "driftless-runner"}, output_nodes)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
        comfy.utils.set_progress_bar_global_hook(None)
    server._finish_node()
    result = RunResult(prompt_id=prompt_id, success=executor.success, seconds=time.perf_counter() - start)
    for event, data in executor.status_messages:
        if event == "execution_error":
            result.error = data
        elif event == "execution_interrupted":
            result.interrupted = True
    result.success = result.success and not result.interrupted and result.error is None
    result.outputs = (executor.history_result or {}).get("outputs", {})
    result.files = output_files(result.outputs)
    return result


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
