"""pytest plugin of tools/gpu_check.sh: ComfyUI booted in-process on the GPU with dynamic VRAM on, as main.py turns
it on, before the comfy tests' own boot (tests/comfy/conftest.py's `comfy_host`, which then finds it booted), and a
summary of what ran where.

Loaded with `-p driftless.tools.gpu_check_boot`. Refuses to run (pytest usage error, exit 4) without a CUDA device
or where dynamic VRAM does not come on, saying why: a check of dynamic VRAM that ran without it would prove nothing.
"""

import collections
import pathlib
import tempfile

import pytest

_STATE = {"device": "?", "comfyui": "?", "dynamic": False}


def pytest_configure(config):
    import torch

    from driftless import comfy_host
    from driftless.headless import host

    if not torch.cuda.is_available():
        raise pytest.UsageError("no CUDA device: the GPU check needs one (tools/gpu_check.sh skips without one)")
    root = host.find_comfyui()
    base = pathlib.Path(tempfile.mkdtemp(prefix="driftless_gpu_check_"))
    host.configure_args(root, base, cpu=False)
    reason = comfy_host.enable_dynamic_vram()
    if reason is not None:
        raise pytest.UsageError(f"dynamic VRAM did not come on: {reason}")
    booted = host.boot(base, cpu=False)
    if not comfy_host.dynamic_vram_enabled():
        raise pytest.UsageError("dynamic VRAM was enabled but the boot turned it off again")
    import comfy.model_management as mm

    _STATE.update(device=mm.get_torch_device_name(mm.get_torch_device()), comfyui=booted.version, dynamic=True)


def pytest_report_header(config):
    return (f"gpu check: ComfyUI {_STATE['comfyui']} in-process on {_STATE['device']}, "
            f"dynamic VRAM {'on' if _STATE['dynamic'] else 'off'}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per test file (passed / failed / errors / skipped), then PASS or FAIL."""
    counts = collections.defaultdict(collections.Counter)
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            counts[report.nodeid.split("::")[0]][outcome] += 1
    write = terminalreporter.write_line
    write("")
    write(f"gpu check summary: ComfyUI {_STATE['comfyui']} on {_STATE['device']}, dynamic VRAM "
          f"{'on' if _STATE['dynamic'] else 'off'}")
    for path in sorted(counts):
        c = counts[path]
        write(f"  {path}: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped")
    ok = exitstatus == 0 and not any(c["failed"] or c["error"] for c in counts.values())
    write(f"gpu check: {'PASS' if ok else 'FAIL'}")
