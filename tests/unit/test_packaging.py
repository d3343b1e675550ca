"""Packaging: pyproject metadata for the Comfy Registry, dependencies that do not fight ComfyUI."""

import re
import tomllib

import pytest

FRAMEWORKS = ("torch", "numpy", "transformers", "torchvision")


@pytest.fixture(scope="module")
def pyproject(repo):
    return tomllib.loads((repo / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_registry_metadata(pyproject):
    project, comfy = pyproject["project"], pyproject["tool"]["comfy"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert "comfyui" not in project["name"].lower() and not project["name"][0].isdigit()
    assert isinstance(project["license"], dict)  # the registry rejects a bare string
    assert project["urls"]["Repository"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in comfy, key
    assert {"test", "dev"} <= set(project["optional-dependencies"])


def test_requires_comfyui_is_the_oldest_tested_release(repo, pyproject):
    """The Registry floor is a release the suite runs on (comfy_host.py names them), not a guess below it; and never
    below 0.3.48, where comfy_api.latest (the V3 API every node uses) first appeared."""
    import ast

    tree = ast.parse((repo / "comfy_host.py").read_text())
    tested = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "TESTED_COMFYUI_VERSIONS")
    version = lambda text: tuple(int(x) for x in text.split("."))  # noqa: E731
    floor = pyproject["tool"]["comfy"]["requires-comfyui"]
    assert floor == f">={min(tested, key=version)}", (floor, tested)
    assert version(floor[2:]) >= (0, 3, 48)


def test_no_hard_pins_on_frameworks(pyproject):
    """torch/numpy/transformers belong to ComfyUI: lower bounds at most, never == or an upper bound."""
    project = pyproject["project"]
    all_reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        all_reqs += extra
    for req in all_reqs:
        if _name(req) in FRAMEWORKS:
            assert not re.search(r"==|<|~=|!=", req), req
    assert "torch" not in {_name(r) for r in project["dependencies"]}  # ComfyUI installs its own torch


def test_requirements_txt_matches_pyproject(repo, pyproject):
    """ComfyUI-Manager installs requirements.txt; the registry reads pyproject: they must agree."""
    lines = [ln.strip() for ln in (repo / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln and not ln.startswith("#")] == pyproject["project"]["dependencies"]


def test_ci_runs_exactly_the_readme_test_command(repo):
    readme = (repo / "README.md").read_text()
    ci = (repo / ".ci" / "run").read_text()
    assert "./driftless test" in readme and "./driftless demo" in readme
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip().startswith("./driftless")]
    assert commands == ["./driftless test"], commands


def test_every_python_file_compiles(repo):
    """Modules only a command imports (benchmarks, tools) are compiled too, so a syntax error cannot hide there."""
    skip = {".driftless", ".git", "node_modules", "test-artifacts", "output"}
    files = [p for p in repo.rglob("*.py") if not skip & set(p.relative_to(repo).parts)]
    assert len(files) > 50
    for path in files:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")  # raises SyntaxError
