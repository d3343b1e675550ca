"""The one module that adapts to the ComfyUI release: the pack is tested on ComfyUI 0.3.75 and 0.33.0
(TESTED_COMFYUI_VERSIONS), and where their surfaces differ, the difference is handled here, by feature and
not by version number, each with the release that brought it:

- `checkpoint_state_dict`: `BaseModel.state_dict_for_saving` takes the UNet's state dict as its first argument
  since 0.33 (the ModelPatcher gained its own `state_dict_for_saving` that supplies it), and CLIP's saved
  state dict comes from `CLIP.state_dict_for_saving` there (`CLIP.get_sd` before);
- `prompt_executor`: `PromptExecutor`'s `cache_args` gained "ram_inactive", read on every prompt since 0.33.

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
