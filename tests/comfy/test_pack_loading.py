"""The pack as ComfyUI loads it: V3 entry point, every node registered, a light and CUDA-free import."""

import json
import os
import subprocess
import sys

from driftless.headless import host

# Modules the pack must not pull in when ComfyUI imports it (they are for metrics/tests/interop, on demand).
HEAVY = ("transformers", "diffusers", "peft", "skimage", "sklearn", "matplotlib", "cv2", "comfy_cli")

PROBE = r"""
import importlib.util, json, sys, time
from driftless.headless import host
host.configure_args(host.find_comfyui(), None, cpu=True)
import torch, comfy_api.latest, comfy.model_management, comfy.sd, comfy.samplers, folder_paths  # what ComfyUI has loaded by then
calls = []
def forbid(name):
    def f(*a, **k):
        calls.append(name)
        raise RuntimeError("torch.cuda." + name + " called at import")
    return f
for name in ("is_available", "current_device", "device_count", "init", "_lazy_init", "get_device_properties",
             "synchronize", "mem_get_info", "set_device", "get_device_name"):
    setattr(torch.cuda, name, forbid(name))
before = set(sys.modules)
t0 = time.perf_counter()
# the way nodes.load_custom_node imports a package folder
spec = importlib.util.spec_from_file_location("probe_pack", str(host.PACK_DIR / "__init__.py"),
                                              submodule_search_locations=[str(host.PACK_DIR)])
module = importlib.util.module_from_spec(spec); sys.modules["probe_pack"] = module; spec.loader.exec_module(module)
t_import = time.perf_counter() - t0
import asyncio
async def nodes():
    ext = await module.comfy_entrypoint()
    return [n.GET_SCHEMA().node_id for n in await ext.get_node_list()]
ids = asyncio.run(nodes())
t_total = time.perf_counter() - t0
new = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"import_s": t_import, "total_s": t_total, "ids": ids, "new_top_modules": new, "cuda_calls": calls,
                  "has_v1": hasattr(module, "NODE_CLASS_MAPPINGS")}))
"""


def _probe():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_import_is_light_and_touches_no_gpu():
    probe = _probe()
    assert probe["cuda_calls"] == []
    assert not probe["has_v1"], "NODE_CLASS_MAPPINGS would shadow comfy_entrypoint (V1 wins in nodes.py)"
    assert not set(HEAVY) & set(probe["new_top_modules"]), probe["new_top_modules"]
    # our own modules only, on top of what ComfyUI already imported
    assert set(probe["new_top_modules"]) <= {"probe_pack"}, probe["new_top_modules"]
    assert probe["total_s"] < 1.0, probe  # measured ~0.01 s on the 2-core CI machine
    print(f"pack import {probe['import_s'] * 1e3:.1f} ms, node list {probe['total_s'] * 1e3:.1f} ms")


def test_plain_import_needs_nothing_but_the_standard_library():
    """`import driftless` alone (no ComfyUI, no torch) works: the registry and tools can read the package."""
    code = "import sys, driftless; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'comfy', 'numpy'}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_node_is_registered_with_tooltips(comfy_host):
    """ComfyUI registered every node the extension lists, and each input declares a tooltip."""
    import asyncio

    import nodes

    from driftless.nodes import all_nodes

    ids = [n.GET_SCHEMA().node_id for n in all_nodes()]
    assert host.SENTINEL_NODE in ids
    info = comfy_host.object_info()
    for node_id in ids:
        assert node_id in nodes.NODE_CLASS_MAPPINGS
        assert node_id.startswith("Driftless")
        spec = info[node_id]
        for section in ("required", "optional"):
            for name, (kind, *opts) in spec["input"].get(section, {}).items():
                assert opts and opts[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert spec["description"]
    assert asyncio.iscoroutinefunction(__import__("driftless").comfy_entrypoint)
