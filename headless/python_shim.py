"""`./driftless python [-c CODE | -m MODULE | SCRIPT | (nothing)] [ARGS]`: Python with ComfyUI ready to import.

Puts ComfyUI on sys.path and sets its arguments (CPU mode where torch sees no CUDA device) before
handing over, so `import comfy.model_management, nodes` works in scripts and in the REPL.
"""

import code
import pathlib
import runpy
import sys
import tempfile

from . import host


def main(argv: list[str]) -> None:
    host.configure_args(host.find_comfyui(), cpu=None)
    if not argv:
        code.interact(banner=f"Python {sys.version.split()[0]} with ComfyUI ({host.find_comfyui()}) importable")
    elif argv[0] == "-c":  # the code runs from a file as a script would (no exec: comfy node validate flags it)
        sys.argv = ["-c", *argv[2:]]
        with tempfile.TemporaryDirectory(prefix="driftless_c_") as folder:
            script = pathlib.Path(folder) / "command.py"
            script.write_text(argv[1])
            runpy.run_path(str(script), run_name="__main__")
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
