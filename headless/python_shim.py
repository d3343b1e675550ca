"""`./driftless python [-c CODE | -m MODULE | SCRIPT | (nothing)] [ARGS]`: Python with ComfyUI ready to import.

Puts ComfyUI on sys.path and sets its arguments (CPU mode where torch sees no CUDA device) before
handing over, so `import comfy.model_management, nodes` works in scripts and in the REPL.
"""

import code
import runpy
import sys

from . import host


def main(argv: list[str]) -> None:
    host.configure_args(host.find_comfyui(), cpu=None)
    if not argv:
        code.interact(banner=f"Python {sys.version.split()[0]} with ComfyUI ({host.find_comfyui()}) importable")
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
