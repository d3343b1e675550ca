"""Boot a real ComfyUI in-process with the Driftless pack loaded (the seam to main.py's start-up).

ComfyUI is found at $DRIFTLESS_COMFYUI (set by ./driftless from the cached environment). The boot
does what `main.py --cpu` does before serving: parse-free CLI arguments, folders, built-in extra
nodes and custom nodes, but no server. Each boot gets its own base directory (models, input,
output, temp, user, custom_nodes), so nothing is written into the ComfyUI install.
Where the ComfyUI releases differ, comfy_host.py adapts.
"""

import json
import logging
import os
import pathlib
import sys
from dataclasses import dataclass

PACK_DIR = pathlib.Path(__file__).resolve().parent.parent
PACK_NAME = "driftless"
# a node id every working install of the pack registers; used to check that it loaded
SENTINEL_NODE = "DriftlessTinyModel"


class ComfyUINotFound(RuntimeError):
    pass


class PackLoadError(RuntimeError):
    pass


def find_comfyui(path: str | os.PathLike | None = None) -> pathlib.Path:
    """The ComfyUI folder to use, checked; the error says how to get one."""
    raw = path or os.environ.get("DRIFTLESS_COMFYUI")
    hint = (
        "Run `./driftless setup` (it installs ComfyUI 0.3.75, or 0.33.0 with `./driftless setup 0.33.0`, into a "
        "cache and sets DRIFTLESS_COMFYUI), "
        "or point DRIFTLESS_COMFYUI at a ComfyUI checkout (the folder holding main.py and comfy/)."
    )
    if not raw:
        raise ComfyUINotFound(f"ComfyUI location unknown: DRIFTLESS_COMFYUI is not set. {hint}")
    root = pathlib.Path(raw).expanduser().resolve()
    missing = [p for p in ("main.py", "nodes.py", "execution.py", "comfy", "comfy_api") if not (root / p).exists()]
    if missing:
        raise ComfyUINotFound(f"{root} is not a ComfyUI folder (missing: {', '.join(missing)}). {hint}")
    return root


def comfyui_version(root: pathlib.Path) -> str:
    text = (root / "comfyui_version.py").read_text() if (root / "comfyui_version.py").exists() else ""
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def link_pack(custom_nodes_root: pathlib.Path) -> pathlib.Path:
    """Make `custom_nodes_root/driftless` point at this checkout, as a user's clone would sit there."""
    custom_nodes_root.mkdir(parents=True, exist_ok=True)
    link = custom_nodes_root / PACK_NAME
    if link.is_symlink() or link.exists():
        if link.resolve() == PACK_DIR:
            return link
        link.unlink()
    link.symlink_to(PACK_DIR, target_is_directory=True)
    return link


def configure_args(root: pathlib.Path, base_directory: pathlib.Path | None = None, cpu: bool | None = None):
    """Put ComfyUI on sys.path and set its CLI arguments without parsing our own argv.

    Must run before anything imports comfy.model_management or folder_paths. `cpu=None` picks CPU
    mode when torch sees no CUDA device (checked here, at boot, never at pack import).
    """
    # first on sys.path, ahead of the working directory: run from this checkout, `import nodes` must
    # find ComfyUI's nodes.py, not the pack's nodes/ folder
    while str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    import comfy.options  # noqa: F401  (keeps args parsing disabled: ComfyUI parses an empty argv)
    import comfy.cli_args


    args = comfy.cli_args.args
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    args.cpu = bool(cpu)
    args.disable_api_nodes = True
    if base_directory is not None:
        args.base_directory = str(base_directory)
        args.database_url = "sqlite:///:memory:"
    # main.py imports the top-level `utils` package before nodes.py puts comfy/ (with its utils.py)
    # first on sys.path; do the same, or `import utils.extra_config` later finds comfy/utils.py.
    # Only the package: its submodules import folder_paths, which must wait for the base directory.
    import utils  # noqa: F401

    return args


@dataclass
class Host:
    """A booted in-process ComfyUI."""

    root: pathlib.Path
    base_directory: pathlib.Path
    version: str

    @property
    def nodes(self):
        import nodes

        return nodes

    def object_info(self) -> dict:
        """What the server's GET /object_info returns, computed in-process."""
        return {name: node_info(name) for name in self.nodes.NODE_CLASS_MAPPINGS}

    def output_directory(self) -> pathlib.Path:
        import folder_paths

        return pathlib.Path(folder_paths.get_output_directory())


_BOOTED: Host | None = None


def boot(base_directory: str | os.PathLike, comfyui: str | os.PathLike | None = None, cpu: bool | None = None) -> Host:
    """Boot ComfyUI once per process with the pack linked into `base_directory/custom_nodes`."""
    global _BOOTED
    if _BOOTED is not None:
        return _BOOTED
    root = find_comfyui(comfyui)
    base = pathlib.Path(base_directory).resolve()
    for sub in ("models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link_pack(base / "custom_nodes")
    configure_args(root, base, cpu)

    import folder_paths  # reads args.base_directory at import
    import nodes

    if not os.path.samefile(folder_paths.base_path, base):
        raise RuntimeError(f"folder_paths was imported before boot() (base {folder_paths.base_path}, wanted {base})")
    from .. import comfy_host

    comfy_host.init_extra_nodes()
    if SENTINEL_NODE not in nodes.NODE_CLASS_MAPPINGS:
        raise PackLoadError(
            f"the Driftless pack did not load into ComfyUI from {base / 'custom_nodes' / PACK_NAME}; "
            "the traceback is in the log above (look for 'IMPORT FAILED')"
        )
    _BOOTED = Host(root=root, base_directory=base, version=comfyui_version(root))
    logging.info("ComfyUI %s booted in-process (base directory %s)", _BOOTED.version, base)
    return _BOOTED


def node_info(node_class: str) -> dict:
    """One entry of GET /object_info (server.py's node_info, which is not importable on its own)."""
    import nodes
    from comfy_api.internal import _ComfyNodeInternal

    obj = nodes.NODE_CLASS_MAPPINGS[node_class]
    if issubclass(obj, _ComfyNodeInternal):
        return obj.GET_NODE_INFO_V1()
    input_types = obj.INPUT_TYPES()
    info = {
        "input": input_types,
        "input_order": {key: list(value.keys()) for key, value in input_types.items()},
        "output": obj.RETURN_TYPES,
        "output_is_list": getattr(obj, "OUTPUT_IS_LIST", [False] * len(obj.RETURN_TYPES)),
        "output_name": getattr(obj, "RETURN_NAMES", obj.RETURN_TYPES),
        "name": node_class,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_class, node_class),
        "description": getattr(obj, "DESCRIPTION", ""),
        "python_module": getattr(obj, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(obj, "CATEGORY", "sd"),
        "output_node": getattr(obj, "OUTPUT_NODE", False) is True,
    }
    if hasattr(obj, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = obj.OUTPUT_TOOLTIPS
    for flag in ("DEPRECATED", "EXPERIMENTAL"):  # the frontend badges these ([DEPR], [BETA])
        if getattr(obj, flag, False):
            info[flag.lower()] = True
    # JSON round trip: the same plain types the HTTP endpoint would hand a client
    return json.loads(json.dumps(info, default=str))
