"""The diffusers twin of a tiny model: a `UNet2DConditionModel` of the same shape holding the same weights.

Weights move with ComfyUI's own map between its UNet and diffusers' (`comfy.utils.unet_to_diffusers`,
the one its checkpoint loader uses for diffusers UNets), so the two compute the same function: the
reference that LoRA files are checked against (tests/comfy/test_lora_interop.py). Needs diffusers (the
`test` extra); nothing here runs in the pack itself.
"""

import torch

from .configs import CONFIGS, TinyModelConfig


def diffusers_unet_config(cfg: TinyModelConfig) -> dict:
    """UNet2DConditionModel arguments for a tiny config (ComfyUI's head width -> diffusers' head counts)."""
    unet = cfg.unet_config()
    levels = len(cfg.channel_mult)
    channels = [cfg.model_channels * m for m in cfg.channel_mult]
    attention = [d > 0 for d in cfg.transformer_depth]
    # diffusers' mid block takes the last entry; a level without attention ignores its own entry
    depth = [d if d > 0 else unet["transformer_depth_middle"] for d in cfg.transformer_depth]
    depth[-1] = unet["transformer_depth_middle"] if not attention[-1] else depth[-1]
    config = dict(
        sample_size=unet["image_size"],
        in_channels=unet["in_channels"],
        out_channels=unet["out_channels"],
        block_out_channels=tuple(channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=unet["num_res_blocks"][0],
        transformer_layers_per_block=tuple(depth),
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=tuple(c // cfg.head_channels for c in channels),  # diffusers' legacy name: head count
        use_linear_projection=unet["use_linear_in_transformer"],
        norm_num_groups=32,
    )
    if cfg.family == "sdxl":
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=cfg.adm_in_channels)
    assert len(config["down_block_types"]) == levels
    return config


def diffusers_twin(model_patcher, name: str):
    """A float32 UNet2DConditionModel with the weights of `model_patcher` (a tiny model called `name`)."""
    import comfy.utils
    from diffusers import UNet2DConditionModel

    cfg = CONFIGS[name]
    unet = UNet2DConditionModel(**diffusers_unet_config(cfg)).eval()
    comfy_state = model_patcher.model.diffusion_model.state_dict()
    wanted = unet.state_dict()
    state = {}
    for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(model_patcher.model.model_config.unet_config).items():
        if diffusers_key in wanted and comfy_key in comfy_state:
            state[diffusers_key] = comfy_state[comfy_key].detach().clone().float()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise RuntimeError(f"the diffusers twin of {name} lacks {len(missing)} weights, e.g. {missing[:3]}")
    unet.load_state_dict(state, strict=True)
    return unet


def sdxl_adm(text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL's ADM vector y from the pooled text embedding and the six size/crop numbers, as ComfyUI
    builds it (comfy.model_base.SDXL.encode_adm: 256-wide sinusoidal embeddings, flattened)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    embed = Timestep(256)
    flat = embed(time_ids.flatten()).reshape(time_ids.shape[0], -1)
    return torch.cat([text_embeds, flat.to(text_embeds.dtype)], dim=1)
