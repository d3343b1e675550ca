"""The example workflows in the real web UI: ComfyUI's own frontend, served by the test server, in headless
Chromium driven by playwright-core (tests/e2e/ui_driver.cjs; provisioned by tools/browser/setup.sh).

One browser session per run: it opens the app, loads a control workflow with an unknown node type (so the
missing-node detection is seen to fire), loads every example and its tiny twin through the frontend's own
loader from the URL the Templates dialog uses, screenshots each, then clicks Run on a tiny twin and waits on
/history. Screenshots go to test-artifacts/browser/ (DRIFTLESS_ARTIFACTS moves it); the path is printed in
the summary. Without Chromium, Node or playwright-core the tests skip, saying why.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from driftless.headless import workflow
from driftless.headless.demo_backbones import write_demo_backbones
from driftless.headless.demo_photos import write_demo_photos

EXAMPLES = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
TWINS = [f"tiny/{p.stem}" for p in (pathlib.Path(__file__).resolve().parents[2] / "example_workflows" / "tiny").glob("*.json")]
QUEUED = "tiny/guidance_grid_tiny"  # no other test runs it, so ComfyUI's cache cannot answer for it
TIMEOUT_S = 420  # the browser session: ~20 s plus the run, which takes seconds on a free CPU, minutes on a shared one

# Console errors that are not about the workflows or the pack, each matched on (step, message, URL).
# "boot" is the app's start-up, before any workflow is loaded.
ALLOWED_CONSOLE_ERRORS = [
    (  # a fresh user folder has none of these optional files yet; the frontend asks and carries on
        r"boot",
        r"Failed to load resource: the server responded with a status of 404",
        r"/(api/userdata/user\.css|user\.css|favicon\.ico|api/userdata/comfy\.templates\.json"
        r"|api/userdata\?dir=(workflows|subgraphs))",
    ),
    (  # the frontend asks the Comfy registry about node packs; the server's CSP blocks it (and tests are offline)
        r".*",
        r"^Connecting to 'https://api\.comfy\.org/.*' violates the following Content Security Policy directive",
        r".*",
    ),
    (  # frontend 1.49.6 (ComfyUI 0.33.0): its setting store reads the graph while the app boots, before it exists
        r"boot",
        r"^ComfyApp graph accessed before initialization$",
        r"/assets/settingStore-[\w-]+\.js$",
    ),
    (  # frontend 1.32.9 bug: useRenderModeSetting stores a setting before its definition is registered
        r"boot",
        r"^TypeError: Cannot read properties of undefined \(reading 'id'\)\n\s+at onChange .*\n\s+at Proxy\.set ",
        r".*",
    ),
]

CONTROL_DEPRECATED = "PerpNeg"  # a core node both tested releases mark deprecated (superseded by the Perp-Neg guider)
CONTROL_WORKFLOW = {
    "last_node_id": 2, "last_link_id": 0, "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4,
    "nodes": [{
        "id": 1, "type": "DriftlessNoSuchNode", "pos": [100, 100], "size": [240, 80], "flags": {}, "order": 0,
        "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [],
    }, {
        "id": 2, "type": CONTROL_DEPRECATED, "pos": [400, 100], "size": [240, 80], "flags": {}, "order": 1,
        "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [1.0],
    }],
}


def _browser_tools(repo) -> tuple[str, str]:
    """(node_modules holding playwright-core, Chromium executable), as ./driftless test provisioned them."""
    reason = os.environ.get("DRIFTLESS_BROWSER_UNAVAILABLE")
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    if os.environ.get("DRIFTLESS_BROWSER_MODULES") and os.environ.get("DRIFTLESS_CHROMIUM"):
        return os.environ["DRIFTLESS_BROWSER_MODULES"], os.environ["DRIFTLESS_CHROMIUM"]
    check = subprocess.run(
        [str(repo / "tools" / "browser" / "setup.sh"), "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["tools/browser/setup.sh --check failed"])[-1]
        pytest.skip(f"browser test skipped: {last}")
    modules, chromium = check.stdout.strip().splitlines()[-2:]
    return modules, chromium


def _placeholder_photos(input_dir):
    """The real examples name my_subject_N.png (and the continual one my_second_subject_N.png); the demo's cat
    and cup photos stand in, so their previews load (the shapes demo's own pictures are written beside them)."""
    demo = write_demo_photos(input_dir)
    for i, source in enumerate(demo[:3], start=1):
        shutil.copyfile(source, input_dir / f"my_subject_{i}.png")
    for i, source in enumerate(demo[3:6], start=1):
        shutil.copyfile(source, input_dir / f"my_second_subject_{i}.png")
    write_demo_backbones(input_dir.parent / "models")  # the tiny twins' metrics nodes list what they name


@pytest.fixture(scope="session")  # session scope: set up before the session-scoped server, so a skip starts none
def browser_tools(repo):
    return _browser_tools(repo)


@pytest.fixture(scope="module")
def ui_run(browser_tools, comfy_server, repo, artifacts_dir, tmp_path_factory):
    """Drive the web UI once; every test below reads its report (asked for first: no server just to skip)."""
    modules, chromium = browser_tools
    _placeholder_photos(comfy_server.base / "input")
    folder = artifacts_dir("browser")
    plan = {
        "url": comfy_server.url, "chromium": chromium, "artifacts": str(folder), "timeout_s": TIMEOUT_S,
        "examples": [*EXAMPLES, *sorted(TWINS)], "queue": QUEUED,
        "control": CONTROL_WORKFLOW,
    }
    plan_file = tmp_path_factory.mktemp("browser") / "plan.json"
    plan_file.write_text(json.dumps(plan))
    env = {**os.environ, "NODE_PATH": modules}
    proc = subprocess.run(
        ["node", str(repo / "tests" / "e2e" / "ui_driver.cjs"), str(plan_file)],
        capture_output=True, text=True, env=env, timeout=TIMEOUT_S + 60,
    )
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else {"fatal": "no report"}
    assert "fatal" not in report and proc.returncode == 0, (
        f"the UI driver failed ({report.get('fatal')}):\n{proc.stderr[-4000:]}\nserver log:\n{comfy_server.log_tail()}"
    )
    (folder / "report.json").write_text(json.dumps(report, indent=1))  # timings, console messages, dialogs
    report["artifacts"] = folder
    return report


def test_missing_node_detection_fires_on_an_unknown_type(ui_run):
    control = ui_run["control"]
    assert control["missing"] == ["DriftlessNoSuchNode"]
    # ComfyUI 0.3.75's frontend opens a "missing nodes" dialog, 0.33.0's shows a "Missing node: <type>" toast
    assert any("missing node" in text.lower() for text in control["notices"]), control["notices"]


def test_deprecated_node_detection_fires(ui_run, comfy_server):
    """The control workflow's deprecated core node is seen as deprecated, as the host declares it."""
    assert comfy_server.get(f"/object_info/{CONTROL_DEPRECATED}")[CONTROL_DEPRECATED].get("deprecated") is True
    assert ui_run["control"]["deprecated"] == [CONTROL_DEPRECATED]


def _node_toasts(step) -> list[str]:
    """Toasts about the workflow's nodes (missing, replaceable by another node), not about model files it names."""
    return [text for text in step["toasts"] if "missing node" in text.lower() or "can be replaced" in text.lower()]


@pytest.mark.parametrize("name", [*EXAMPLES, *sorted(TWINS)])
def test_example_loads_with_every_node_type_known_and_current(ui_run, repo, name):
    step = next(s for s in ui_run["steps"] if s["name"] == name)
    assert step["missing"] == [], f"{name}: the web UI reports missing node types {step['missing']}"
    assert step["deprecated"] == [], f"{name}: the web UI marks {step['deprecated']} deprecated: use current nodes"
    assert step["dialogs"] == [], f"{name}: a dialog opened on load: {step['dialogs']}"
    assert _node_toasts(step) == [], f"{name}: the web UI says {_node_toasts(step)}"
    on_disk = json.loads((repo / "example_workflows" / f"{name}.json").read_text())
    assert step["nodes"] == len(on_disk["nodes"])
    assert (ui_run["artifacts"] / f"{name.split('/')[-1]}.png").stat().st_size > 10_000


def _unexpected(errors: list[dict]) -> list[dict]:
    def allowed(error):
        return any(
            re.fullmatch(step, error["step"]) and re.search(text, error["text"]) and re.search(url, error["url"] or "")
            for step, text, url in ALLOWED_CONSOLE_ERRORS
        )

    return [e for e in errors if not allowed(e)]


def test_no_console_errors(ui_run):
    assert ui_run["page_errors"] == [], "uncaught exceptions in the page"
    unexpected = _unexpected([e for e in ui_run["console_errors"] if e["step"] != "control"])
    assert unexpected == [], "console errors:\n" + "\n".join(f"[{e['step']}] {e['text']} ({e['url']})" for e in unexpected)


def test_allow_list_does_not_hide_errors_from_our_workflows():
    """The allow-list is narrow: a 404 while an example loads, or any other TypeError, still counts."""
    errors = [
        {"step": "guidance_grid", "text": "Failed to load resource: the server responded with a status of 404 (Not Found)",
         "url": "http://127.0.0.1:1/api/userdata/user.css"},
        {"step": "boot", "text": "TypeError: Cannot read properties of undefined (reading 'id')\n    at onWidget (x.js)",
         "url": ""},
        {"step": "boot", "text": "Failed to load resource: the server responded with a status of 404 (Not Found)",
         "url": "http://127.0.0.1:1/extensions/driftless/x.js"},
    ]
    assert _unexpected(errors) == errors


def test_tiny_twin_queued_from_the_run_button_succeeds(ui_run, comfy_server, repo):
    queued = ui_run["queued"]
    assert queued["http_status"] == 200 and queued["node_errors"] == {}, queued["node_errors"]
    assert queued["status"] == "success", f"{queued['status']}:\n{comfy_server.log_tail()}"
    # what the web UI sent is exactly what the headless runner and the curl recipe send
    ui = workflow.load_workflow_file(repo / "example_workflows" / f"{QUEUED}.json")
    headless = workflow.to_api_format(ui, comfy_server.get("/object_info"))
    posted = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in queued["posted_prompt"].items()}
    assert posted == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in headless.items()}
    # it really ran (no answer from ComfyUI's cache) and wrote the grid's four images
    entry = comfy_server.get(f"/history/{queued['prompt_id']}")[queued["prompt_id"]]
    cached = dict(entry["status"]["messages"]).get("execution_cached", {}).get("nodes", [])
    train = next(k for k, v in headless.items() if v["class_type"] == "DriftlessTrainLoRA")
    assert train not in cached
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert len(images) == 4
    for image in images:
        assert (comfy_server.base / "output" / image["subfolder"] / image["filename"]).stat().st_size > 0
    assert (ui_run["artifacts"] / "guidance_grid_tiny_after_run.png").stat().st_size > 10_000

