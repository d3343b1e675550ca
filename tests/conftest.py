"""Shared test set-up: tiers by folder, and `import driftless` resolving to this checkout.

Tiers (pytest markers, applied from the folder a test lives in):
  unit  tests/unit   pure torch, no ComfyUI
  comfy tests/comfy  real ComfyUI booted in-process once per session
  e2e   tests/e2e    a real `main.py --cpu` server on a loopback port
Run one tier with `./driftless test -m unit` (or comfy, e2e).
"""

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _make_pack_importable() -> None:
    # ./driftless does this too; repeated here so plain `python -m pytest` works in the venv
    pythonpath = REPO / ".driftless" / "pythonpath"
    link = pythonpath / "driftless"
    pythonpath.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    if str(pythonpath) not in sys.path:
        sys.path.insert(0, str(pythonpath))


_make_pack_importable()

TIERS = ("unit", "comfy", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = pathlib.Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO
