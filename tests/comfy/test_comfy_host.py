"""comfy_host.py, the one module that adapts to the ComfyUI release, on whichever tested release runs the suite."""

import copy


def test_the_suite_runs_on_a_tested_release(comfy_host):
    from driftless.comfy_host import TESTED_COMFYUI_VERSIONS

    assert comfy_host.version in TESTED_COMFYUI_VERSIONS, (
        f"ComfyUI {comfy_host.version} is not a tested release {TESTED_COMFYUI_VERSIONS}: run ./driftless test")


def test_the_executor_runs_a_prompt_twice_with_the_release_cache(run_prompt, txt2img):
    """PromptExecutor built with every cache key the release reads (0.33 added ram_inactive): two prompts run."""
    first, second = run_prompt(txt2img(steps=1, prefix="host_a")), run_prompt(txt2img(steps=1, prefix="host_b"))
    assert first.success and second.success


def test_extensions_load_without_a_server_and_leave_none_behind(comfy_host):
    import nodes
    import server

    assert getattr(server.PromptServer, "instance", None) is None  # the stand-in is gone after boot
    try:
        import app.node_replace_manager  # noqa: F401  (0.33 on)
    except ImportError:
        return
    assert "BatchImagesNode" in nodes.NODE_CLASS_MAPPINGS
    from driftless import comfy_host as seam

    assert seam._REPLACEMENTS is not None and seam._REPLACEMENTS.has_replacement("ImageBatch")


def test_node_replacements_as_post_prompt_applies_them(comfy_host, monkeypatch):
    """A node the release no longer has becomes its registered successor (0.33 on); nothing changes otherwise."""
    import nodes

    from driftless.comfy_host import _REPLACEMENTS, apply_node_replacements

    prompt = {"a": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
                    "_meta": {"title": "Empty Image"}},
              "b": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["a", 0]},
                    "_meta": {"title": "Batch Images"}}}
    assert apply_node_replacements(copy.deepcopy(prompt)) == prompt  # every node exists: unchanged
    monkeypatch.delitem(nodes.NODE_CLASS_MAPPINGS, "ImageBatch")  # as if the release had removed it
    replaced = apply_node_replacements(copy.deepcopy(prompt))
    if _REPLACEMENTS is None:  # 0.3.75: no replacements
        assert replaced == prompt
    else:
        assert replaced["b"]["class_type"] == "BatchImagesNode"
        assert sorted(replaced["b"]["inputs"]) == ["images.image0", "images.image1"]


def test_every_comfy_api_name_the_pack_uses_exists_on_this_release(comfy_host, repo):
    """The pack's V3 surface (io.X, io.X.Input/Output, ui.X), scanned from its source, against the running release:
    what requires-comfyui promises, checked on each tested release."""
    import re

    from comfy_api.latest import io, ui

    rooms = ("nodes", "guidance", "trainers", "metrics", "lora", "shapes", "tinymodels")
    used = set()
    for path in [repo / "__init__.py", *(p for room in rooms for p in (repo / room).rglob("*.py"))]:
        used |= set(re.findall(r"\b(io|ui)\.([A-Z][A-Za-z]+)(?:\.([A-Za-z_]+))?", path.read_text()))
    assert len(used) >= 30, used
    missing = []
    for module, name, member in sorted(used):
        owner = getattr({"io": io, "ui": ui}[module], name, None)
        if owner is None or (member and not hasattr(owner, member)):
            missing.append(".".join(p for p in (module, name, member) if p))
    assert not missing, f"ComfyUI {comfy_host.version} lacks {missing}"
