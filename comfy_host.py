"""The one module that adapts to the ComfyUI release: the pack is tested on ComfyUI 0.3.75 and 0.33.0
(TESTED_COMFYUI_VERSIONS), and where their surfaces differ, the difference is handled here, by feature and
not by version number, each with the release that brought it:

- `checkpoint_state_dict`: `BaseModel.state_dict_for_saving` takes the UNet's state dict as its first argument
  since 0.33 (the ModelPatcher gained its own `state_dict_for_saving` that supplies it), and CLIP's saved
  state dict comes from `CLIP.state_dict_for_saving` there (`CLIP.get_sd` before);
- `prompt_executor`: `PromptExecutor`'s `cache_args` gained "ram_inactive", read on every prompt since 0.33;
- `init_extra_nodes`: since 0.33 a built-in extension (comfy_extras/nodes_replacements.py) registers node
  replacements on `PromptServer.instance` at start-up, which an in-process boot has not got;
  `apply_node_replacements` rewrites a prompt's removed nodes as POST /prompt does since then.

Everything else uses surfaces stable across both. Imports ComfyUI inside functions only.
"""

TESTED_COMFYUI_VERSIONS = ("0.3.75", "0.33.0")


def checkpoint_state_dict(model_patcher, clip, vae) -> dict:
    """The state dict ComfyUI's own checkpoint saving writes for (MODEL, CLIP, VAE): `model.diffusion_model.*`,
    the text encoders under their checkpoint prefixes, `first_stage_model.*`."""
    clip_sd = clip.state_dict_for_saving() if hasattr(clip, "state_dict_for_saving") else clip.get_sd()
    if hasattr(model_patcher, "state_dict_for_saving"):  # 0.33 on
        return model_patcher.state_dict_for_saving(clip_sd, vae.get_sd())
    return model_patcher.model.state_dict_for_saving(clip_sd, vae.get_sd())


def prompt_executor(server):
    """ComfyUI's own executor as main.py builds it with its default flags: the classic cache (outputs dropped once
    no node needs them) and no RAM headroom. `cache_args` carries every key either release reads (0.3.75: "lru"
    and "ram"; 0.33.0 added "ram_inactive"), each at main.py's default."""
    import execution

    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                    cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})


_REPLACEMENTS = None  # 0.33 on: the NodeReplaceManager the built-in extension filled at boot


def init_extra_nodes() -> None:
    """Load ComfyUI's built-in extra nodes and the custom nodes as main.py does, without a server. From 0.33 on a
    stand-in `PromptServer.instance` holding the release's NodeReplaceManager is there while they load (then
    removed), so the node-replacement extension registers into it instead of failing with "IMPORT FAILED"."""
    import asyncio

    import nodes

    global _REPLACEMENTS
    try:
        from app.node_replace_manager import NodeReplaceManager  # 0.33 on
    except ImportError:
        NodeReplaceManager = None
    if NodeReplaceManager is not None:
        import server
    stand_in = NodeReplaceManager is not None and getattr(server.PromptServer, "instance", None) is None
    if stand_in:
        import types

        _REPLACEMENTS = NodeReplaceManager()
        server.PromptServer.instance = types.SimpleNamespace(node_replace_manager=_REPLACEMENTS)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        if stand_in:
            del server.PromptServer.instance


def apply_node_replacements(prompt: dict) -> dict:
    """`prompt` (API format) with nodes this release no longer has replaced by their registered successors, as
    POST /prompt does from 0.33 on; unchanged on 0.3.75 (no replacements) and where every node exists."""
    if _REPLACEMENTS is not None:
        _REPLACEMENTS.apply_replacements(prompt)
    return prompt


def flux_unet_config(config: dict) -> dict:
    """`config` (Flux.1's diffusion-model settings) with the keys this release's model detection adds for a plain
    Flux.1 checkpoint: from 0.33 on `FluxParams` requires `txt_ids_dims` (the text position-id axes; none for
    Flux.1), which 0.3.75 does not know."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    fields = {f.name for f in dataclasses.fields(FluxParams)}
    return {**config, "txt_ids_dims": []} if "txt_ids_dims" in fields else config
