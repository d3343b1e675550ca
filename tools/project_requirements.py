"""Print the pack's requirements from pyproject.toml, one per line, for pip.

    python tools/project_requirements.py runtime   # [project].dependencies
    python tools/project_requirements.py all       # runtime + every optional extra

pyproject.toml is the single source of truth; requirements.txt (read by ComfyUI-Manager) must list
the same runtime dependencies, which a unit test checks.
"""

import pathlib
import sys
import tomllib


def requirements(which: str) -> list[str]:
    project = tomllib.loads((pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    if which == "all":
        for extra in sorted(project.get("optional-dependencies", {})):
            reqs += project["optional-dependencies"][extra]
    return list(dict.fromkeys(reqs))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "runtime")))
