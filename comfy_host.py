"""The one module that adapts to the ComfyUI release: the pack is tested on ComfyUI 0.3.75 and 0.33.0
(TESTED_COMFYUI_VERSIONS), and where their surfaces differ, the difference is handled here, by feature and
not by version number, each with the release that brought it:

- `checkpoint_state_dict`: `BaseModel.state_dict_for_saving` takes the UNet's state dict as its first argument
  since 0.33 (the ModelPatcher gained its own `state_dict_for_saving` that supplies it), and CLIP's saved
  state dict comes from `CLIP.state_dict_for_saving` there (`CLIP.get_sd` before);
- `prompt_executor`: `PromptExecutor`'s `cache_args` gained "ram_inactive", read on every prompt since 0.33;
- `init_extra_nodes`: since 0.33 a built-in extension (comfy_extras/nodes_replacements.py) registers node
  replacements on `PromptServer.instance` at start-up, which an in-process boot has not got;
  `apply_node_replacements` rewrites a prompt's removed nodes as POST /prompt does since then;
- dynamic VRAM (`ModelPatcherDynamic`, 0.16 on; main.py turns it on for NVIDIA and recent AMD GPUs): the stock
  loaders wrap models in `comfy.model_patcher.CoreModelPatcher`, which main.py points at ModelPatcherDynamic
  (`model_patcher_class`, `dynamic_vram_enabled`, `enable_dynamic_vram` for in-process boots on a GPU). Such a
  patcher never patches weights in place: a layer's weight patches (a merged LoRA) are applied when the weight is
  cast for the forward (`loaded_weight` gives a weight as the model computes with it), and with it on, comfy.ops
  layers built without a state dict have no weights until one is loaded (`eager_weights` for models built from
  a config).

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


def model_patcher_class():
    """The ModelPatcher class the release's stock loaders wrap a diffusion model in (CheckpointLoaderSimple's
    MODEL): `CoreModelPatcher`, which is ModelPatcherDynamic once dynamic VRAM is on (0.16 on), else ModelPatcher."""
    import comfy.model_patcher

    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def is_dynamic(model_patcher) -> bool:
    """Whether `model_patcher` loads its weights dynamically (ModelPatcherDynamic): no weight patched in place."""
    return bool(getattr(model_patcher, "is_dynamic", lambda: False)())


def dynamic_vram_enabled() -> bool:
    """Whether this ComfyUI loads models with ModelPatcherDynamic (main.py enabled it, or `enable_dynamic_vram`).
    False on releases without it (before 0.16) and under --cpu, --highvram, --gpu-only, --novram or
    --disable-dynamic-vram."""
    import comfy.model_patcher

    dynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    return dynamic is not None and model_patcher_class() is dynamic


def enable_dynamic_vram() -> str | None:
    """Turn dynamic VRAM loading on as main.py does at start-up, for an in-process boot on a GPU: comfy_aimdo's
    library loaded and its devices initialised, the stock loaders' class pointed at ModelPatcherDynamic,
    `comfy.memory_management.aimdo_enabled` set; under main.py's conditions (not --cpu, --highvram, --gpu-only,
    --novram or --disable-dynamic-vram; an NVIDIA GPU or ROCm >= 7.14 unless --enable-dynamic-vram; torch >= 2.8).
    Call it after `headless.host.configure_args` and before anything imports comfy.model_management (comfy_aimdo's
    modules bind its library when first imported), then boot. Returns None once enabled, else why not."""
    import sys

    if "comfy.model_management" in sys.modules:
        raise RuntimeError("enable_dynamic_vram() must run before comfy.model_management is imported: "
                           "call it right after headless.host.configure_args, before host.boot")
    import comfy.cli_args

    if not hasattr(comfy.cli_args, "enables_dynamic_vram"):
        return "this ComfyUI release has no dynamic VRAM (ModelPatcherDynamic came with 0.16)"
    args = comfy.cli_args.args
    if not comfy.cli_args.enables_dynamic_vram():
        return "off by ComfyUI's arguments (--cpu, --highvram, --gpu-only, --novram or --disable-dynamic-vram)"
    import torch

    if not torch.cuda.is_available():  # ComfyUI itself refuses to start without --cpu then
        return "no CUDA or ROCm device (boot with --cpu)"
    import comfy_aimdo.control

    headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024 ** 3)
    comfy_aimdo.control.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure)
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher

    supported = mm.is_nvidia() or (mm.is_amd() and mm.rocm_version >= (7, 14))
    if not (args.enable_dynamic_vram or supported):
        return f"not supported on {mm.get_torch_device_name(mm.get_torch_device())} (NVIDIA, or AMD with ROCm >= 7.14)"
    if not args.enable_dynamic_vram and mm.torch_version_numeric < (2, 8):
        return f"torch {mm.torch_version_numeric} is older than 2.8"
    devices = [(d.index, int(args.vram_headroom * 1024 ** 3)) for d in mm.get_all_torch_devices()]
    if not comfy_aimdo.control.init_devices(devices):
        return "comfy_aimdo did not initialise the GPUs (main.py then falls back to ModelPatcher too)"
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return None


def eager_weights():
    """A context (or decorator) in which comfy.ops layers allocate their weights when built, as they always did
    before dynamic VRAM: with it on (0.16 on), a layer built without a state dict has `weight = None` until one
    is loaded, which a model built from a config and filled in place (the tiny models) never gets. No-op where
    dynamic VRAM is off or absent; the model then loads dynamically all the same."""
    import contextlib

    @contextlib.contextmanager
    def context():
        try:
            import comfy.memory_management as mem
        except ImportError:  # before 0.16
            yield
            return
        previous = getattr(mem, "aimdo_enabled", False)
        mem.aimdo_enabled = False
        try:
            yield
        finally:
            mem.aimdo_enabled = previous

    return context()


def loaded_weight(model_patcher, key: str):
    """The weight `key` ("diffusion_model.….weight") of the loaded `model_patcher`, its patches (a merged LoRA)
    included. A ModelPatcher patches weights in place when it loads, so that is the module's tensor. A
    ModelPatcherDynamic applies them as each layer's weight is cast for the forward (only its small, pre-loaded layers
    are patched in place, their originals kept in `backup`): the patched weight is computed here with ModelPatcher's
    own function, so it is what ModelPatcher would have loaded (on a GPU ModelPatcher patches in
    `lora_compute_dtype`, fp16 where supported, the dynamic cast in the weight's dtype)."""
    import comfy.utils

    if not is_dynamic(model_patcher) or key not in model_patcher.patches or key in model_patcher.backup:
        return comfy.utils.get_attr(model_patcher.model, key)
    return model_patcher.patch_weight_to_device(key, device_to=model_patcher.load_device, return_weight=True)


def forget_cast_weights(module) -> int:
    """Mark every layer's GPU copy of its weight stale, as ComfyUI marks them when a model's patches change. With
    dynamic VRAM a layer keeps the weight it cast to the GPU (`_v_weight`, reused while `_v_signature` says its pages
    are still resident); a copy made during an inference-mode forward (any sampling) is an inference tensor, which
    autograd refuses to save for backward and which the next patched cast may not update in place. The next forward
    casts again, in the mode it runs in. Returns how many layers held one (none without dynamic VRAM, or on a CPU)."""
    count = 0
    for layer in module.modules():
        if getattr(layer, "_v_signature", None) is not None:
            layer._v_signature = None
            count += 1
    return count
