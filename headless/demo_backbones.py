"""The demo's metric backbones: seeded random CLIP and DINO folders (tinymodels/metrics_backbones.py, `tiny` size)
in models/driftless_metrics/driftless_demo/, so the tiny example workflows end in real metrics reports with no
weights at all. Their scores mean nothing; the loading, preprocessing, embedding and report are the real ones."""

import contextlib
import functools
import os
import pathlib
import shutil
import sys
import tempfile

from .demo_photos import DEMO_FOLDER

CLIP = f"{DEMO_FOLDER}/clip-random-tiny"  # the names the metrics nodes list (relative to models/driftless_metrics)
DINO = f"{DEMO_FOLDER}/dino-random-tiny"
NAMES = (CLIP, DINO)
SEEDS = {CLIP: 0, DINO: 1}


def metrics_folder(models_directory: pathlib.Path) -> pathlib.Path:
    """models/driftless_metrics under a ComfyUI models folder: where the metrics nodes look first."""
    from ..nodes.host import METRICS_FOLDER

    return pathlib.Path(models_directory) / METRICS_FOLDER


def write_demo_backbones(models_directory: pathlib.Path) -> list[pathlib.Path]:
    """Write the two folders into `models_directory`/driftless_metrics (once: an existing folder is kept);
    returns their paths. Each is written beside its place and renamed into it, so none is ever half there."""
    from ..tinymodels.metrics_backbones import save_clip, save_dino

    savers = {CLIP: functools.partial(save_clip, seed=SEEDS[CLIP]),
              DINO: functools.partial(save_dino, seed=SEEDS[DINO], version=1)}  # DINO v1, as the real examples use
    root = metrics_folder(models_directory)
    for name in NAMES:
        if not (root / name).exists():
            with _quiet_transformers():
                _write(root / name, savers[name])
    return [root / name for name in NAMES]


def _write(target: pathlib.Path, save) -> None:
    """Save into a hidden folder beside `target` (not listed by the metrics nodes), then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save(scratch)
        scratch.chmod(0o755)  # mkdtemp made it private
        os.rename(scratch, target)
    except BaseException as e:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (isinstance(e, OSError) and target.is_dir()):  # else another process wrote it first
            raise


@contextlib.contextmanager
def _quiet_transformers():
    """No "Writing model shards" bars in the runner's output."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def main(argv: list[str]) -> int:
    """`./driftless python -m driftless.headless.demo_backbones MODELS_FOLDER`: for the tiny twins in a web UI."""
    if len(argv) != 1:
        print("usage: ./driftless python -m driftless.headless.demo_backbones PATH/TO/ComfyUI/models", file=sys.stderr)
        return 2
    for path in write_demo_backbones(pathlib.Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
