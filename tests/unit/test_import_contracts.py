"""The rooms import one way: import-linter checks the contracts in pyproject.toml ([tool.importlinter]) on the pack,
and, on a small package laid out like it, catches a back-edge (so a broken rule fails CI rather than passing quietly)."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import tomllib

import pytest

LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")


def _lint(pythonpath: pathlib.Path, config: pathlib.Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: the test extra of pyproject.toml installs import-linter (./driftless setup)")
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT_IMPORTS), str(config), "--no-cache"], env=env, capture_output=True, text=True,
                          timeout=300)


def _contract_config(repo: pathlib.Path, folder: pathlib.Path, kind: str, sources: list[str] | None = None) -> pathlib.Path:
    """A config holding the pack's own contract of `kind` ("layers" or "forbidden"), as pyproject.toml states it;
    `sources` narrows a forbidden contract's source modules to those a toy package has."""
    settings = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in settings["contracts"] if c["type"] == kind)
    if sources is not None:
        contract = {**contract, "source_modules": sources}
    lines = ["[tool.importlinter]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items() if k != "contracts"]
    lines += ["", "[[tool.importlinter.contracts]]"] + [f"{k} = {json.dumps(v)}" for k, v in contract.items()]
    config = folder / f"{kind}.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_the_pack_keeps_its_import_contracts(repo):
    out = _lint(repo / ".driftless" / "pythonpath", repo / "pyproject.toml")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "Rooms import one way" in out.stdout


def _toy_pack(root: pathlib.Path, back_edge: str | None) -> pathlib.Path:
    """A package named like the pack, one module per room, each importing the room below it; `back_edge` adds
    one import the other way ("lora -> nodes", say)."""
    rooms = {"bench": "sweeps", "sweeps": "headless", "headless": "nodes", "nodes": "trainers", "trainers": "lora", "guidance": "lora",
             "metrics": None, "shapes": "tinymodels", "tinymodels": "lora", "lora": None}
    pack = root / "driftless"
    pack.mkdir(parents=True)
    (pack / "comfy_host.py").write_text("thing = 1\n" + ("from .nodes import thing\n" if back_edge == "comfy_host -> nodes" else ""))
    for room, below in rooms.items():
        (pack / room).mkdir(parents=True)
        (pack / room / "__init__.py").write_text("")
        lines = [f"from ..{below} import thing" if below else "from ..comfy_host import thing"]
        if back_edge and back_edge.split(" -> ")[0] == room:
            lines.append(f"from ..{back_edge.split(' -> ')[1]} import thing as back")
        (pack / room / "thing.py").write_text("\n".join(lines) + "\nthing = 1\n")
    (pack / "__init__.py").write_text("")
    return root


@pytest.mark.parametrize("back_edge", ["lora -> trainers", "nodes -> headless", "trainers -> guidance", "shapes -> nodes",
                                       "comfy_host -> nodes", "nodes -> sweeps", "sweeps -> bench"])
def test_a_back_edge_breaks_the_contract(repo, tmp_path, back_edge):
    config = _contract_config(repo, tmp_path, "layers")
    clean = _lint(_toy_pack(tmp_path / "clean", None), config)
    assert clean.returncode == 0, clean.stdout[-3000:]
    broken = _lint(_toy_pack(tmp_path / "broken", back_edge), config)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout, broken.stdout[-3000:]


def test_pure_math_importing_comfyui_breaks_the_contract(repo, tmp_path):
    config = _contract_config(repo, tmp_path, "forbidden", sources=["driftless.trainers.regularizers"])
    root = _toy_pack(tmp_path / "pack", None)
    regularizers = root / "driftless" / "trainers" / "regularizers"
    regularizers.mkdir()
    (regularizers / "__init__.py").write_text("import torch\n")
    assert _lint(root, config).returncode == 0
    (regularizers / "__init__.py").write_text(textwrap.dedent("""
        def patch():
            import comfy.model_management
            return comfy.model_management
    """))
    out = _lint(root, config)
    assert out.returncode != 0 and "driftless.trainers.regularizers is not allowed to import comfy" in out.stdout, out.stdout[-3000:]
