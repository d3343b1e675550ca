"""The Comfy Registry package: what `comfy node pack` ships (comfy-cli's own packer, honouring .comfyignore), what
`comfy node validate` checks (its ruff rules), the icon, and console text a Windows cp1252 console can print."""

import ast
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # comfy-cli's pathspec use

NOT_SHIPPED = ("tests/", "bench/", "tools/", "headless/", "sweeps/", "docs/", ".ci/", "output/", "test-artifacts/", ".driftless/")
LOG_CALLS = {"debug", "info", "warning", "error", "exception", "critical", "warn", "log"}


@pytest.fixture(scope="module")
def package(repo, tmp_path_factory):
    """The names in the zip comfy-cli's `comfy node pack` writes for this checkout (git-tracked files, .comfyignore)."""
    import os

    from comfy_cli.file_utils import zip_files

    out = tmp_path_factory.mktemp("pack") / "node.zip"
    here = os.getcwd()
    os.chdir(repo)
    try:
        zip_files(out, includes=tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["comfy"]["includes"])
    finally:
        os.chdir(here)
    with zipfile.ZipFile(out) as z:
        return z.namelist()


def test_the_package_ships_only_what_runs_inside_comfyui(package):
    assert not [n for n in package if n.startswith(NOT_SHIPPED) or n == "driftless"], "development files shipped"
    for needed in ("__init__.py", "comfy_host.py", "nodes/__init__.py", "trainers/loop.py", "guidance/guider.py",
                   "metrics/backbones.py", "lora/files.py", "tinymodels/build.py", "pyproject.toml", "requirements.txt",
                   "README.md", "LICENSE"):
        assert needed in package, needed
    assert [n for n in package if n.startswith("example_workflows/") and n.endswith(".json")]  # ComfyUI's templates
    assert [n for n in package if n.startswith("shapes/weights/")]  # the demo model's shipped weights


def test_shipped_code_imports_nothing_left_out(repo, package):
    """A shipped module importing a room that is not shipped would fail in a Registry install."""
    left_out = {p.rstrip("/") for p in NOT_SHIPPED}
    wrong = []
    for name in (n for n in package if n.endswith(".py")):
        for node in ast.walk(ast.parse((repo / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                if node.module.split(".")[0] in left_out:
                    wrong.append(f"{name}: from {'.' * node.level}{node.module}")
    assert not wrong, wrong


def test_comfy_node_validate_finds_nothing(repo):
    """`comfy node validate` runs ruff with these rules over the whole checkout; any finding is a warning."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", ".", "-q", "--select", "S102,S307,E702", "--exit-zero"],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout


def test_the_icon_is_in_the_repository_where_its_url_points(repo):
    from PIL import Image

    toml = tomllib.loads((repo / "pyproject.toml").read_text())
    icon, repository = toml["tool"]["comfy"]["Icon"], toml["project"]["urls"]["Repository"]
    owner_repo = repository.removeprefix("https://github.com/")
    match = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(owner_repo)}/main/(.+\.png)", icon)
    assert match, icon
    with Image.open(repo / match.group(1)) as image:
        assert image.size[0] == image.size[1] >= 128


def _console_strings(tree):
    """String constants in print/logging/warnings calls and raised exceptions: what reaches the console."""
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "print") or (
                    isinstance(f, ast.Attribute) and f.attr in LOG_CALLS and isinstance(f.value, ast.Name)
                    and f.value.id in ("logging", "logger", "log", "warnings")):
                parts = node.args
        elif isinstance(node, ast.Raise) and node.exc is not None:
            parts = [node.exc]
        for part in parts:
            for s in ast.walk(part):
                if isinstance(s, ast.Constant) and isinstance(s.value, str):
                    yield s


def test_console_text_prints_on_a_windows_cp1252_console(repo, package):
    """Greek letters, arrows or ≤ in a printed or logged message crash print() and garble logging on Windows' default
    console encoding; node tooltips and docstrings (shown by the web UI) may use them."""
    bad = []
    for name in (n for n in package if n.endswith(".py")):
        for s in _console_strings(ast.parse((repo / name).read_text())):
            try:
                s.value.encode("cp1252")
            except UnicodeEncodeError:
                bad.append(f"{name}:{s.lineno}: {s.value[:80]!r}")
    assert not bad, "\n".join(bad)


def test_the_scan_sees_what_it_must_refuse():
    tree = ast.parse('import logging\nlogging.info("σ = %s", 1)\nraise ValueError(f"γ {x}")\nprint("→")\nx = "ω"\n')
    texts = [s.value for s in _console_strings(tree)]
    assert texts == ["σ = %s", "γ ", "→"] or sorted(texts) == sorted(["σ = %s", "γ ", "→"])
