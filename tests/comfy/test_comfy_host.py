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
