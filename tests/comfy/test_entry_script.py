"""./driftless: subcommands print what they do; bad use exits 2; `python` gives ComfyUI in CPU mode."""

import os
import subprocess


def _driftless(repo, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(repo / "driftless"), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_and_unknown_command(repo):
    out = _driftless(repo, "help")
    assert out.returncode == 0
    for sub in ("setup", "demo", "test", "run FILE.json", "bench NAME", "sweep SPEC", "ray ARGS", "python"):
        assert f"./driftless {sub}" in out.stdout
    out = _driftless(repo, "frobnicate")
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr


def test_python_subcommand_has_comfyui_importable_in_cpu_mode(repo, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, comfy.model_management as mm, nodes\n"
        "print('device', mm.get_torch_device(), 'args', sys.argv[1:])\n"
    )
    out = _driftless(repo, "python", str(script), "--flag", "x")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "device cpu args ['--flag', 'x']" in out.stdout
    out = _driftless(repo, "python", "-c", "import comfy.cli_args as a; print('cpu', a.args.cpu)")
    assert out.returncode == 0 and "cpu True" in out.stdout


def test_unknown_benchmark_lists_the_available_ones(repo):
    out = _driftless(repo, "bench", "no-such-bench")
    assert out.returncode == 2 and "unknown benchmark 'no-such-bench'" in out.stderr


def test_host_option_picks_one_release(repo):
    """--host H runs any command on ComfyUI H (its own cached environment); a missing or unknown release is refused."""
    for host in ("0.3.75", "0.33.0"):
        out = _driftless(repo, "--host", host, "python", "-c", "import comfyui_version as v; print('on', v.__version__)")
        assert out.returncode == 0 and f"on {host}" in out.stdout, out.stderr[-2000:]
    out = _driftless(repo, "--host")
    assert out.returncode == 2 and "--host needs a release: 0.3.75 or 0.33.0" in out.stderr
    out = _driftless(repo, "--host", "9.9", "python", "-c", "pass")
    assert out.returncode == 2 and "unknown ComfyUI host '9.9': choose one of 0.3.75 0.33.0" in out.stderr
