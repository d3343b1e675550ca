"""The diffusers twin of a tiny model: a `UNet2DConditionModel`, `SD3Transformer2DModel` or `FluxTransformer2DModel`
of the same shape holding the same weights.

Weights move with ComfyUI's own maps between its modules and diffusers' (`comfy.utils.unet_to_diffusers`,
`mmdit_to_diffusers`, `flux_to_diffusers`: the ones its loaders use for diffusers-format checkpoints, fused q/k/v
rows and swapped modulation halves included), so the two compute the same function: the reference that LoRA
files are checked against (tests/comfy/test_lora_interop*.py). Needs diffusers (the `test` extra); nothing here
runs in the pack itself.
"""

import torch

from .configs import CONFIGS, TinyDiTConfig, TinyModelConfig


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
    """A float32 diffusers model with the weights of `model_patcher` (a tiny model called `name`)."""
    import comfy.utils
    from diffusers import UNet2DConditionModel

    cfg = CONFIGS[name]
    if isinstance(cfg, TinyDiTConfig):
        return _dit_twin(model_patcher, cfg, name)
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


def diffusers_dit_config(cfg: TinyDiTConfig) -> dict:
    """SD3Transformer2DModel / FluxTransformer2DModel arguments for a tiny DiT config."""
    unet = cfg.unet_config()
    if cfg.family == "sd3":
        return dict(sample_size=cfg.pos_embed_max_size * 2, patch_size=2, in_channels=16, out_channels=16,
                    num_layers=cfg.depth, attention_head_dim=64, num_attention_heads=cfg.depth,
                    joint_attention_dim=unet["context_embedder_config"]["params"]["in_features"],
                    caption_projection_dim=cfg.width, pooled_projection_dim=unet["adm_in_channels"],
                    pos_embed_max_size=cfg.pos_embed_max_size, dual_attention_layers=tuple(cfg.dual_attention_blocks),
                    qk_norm="rms_norm")
    return dict(patch_size=1, in_channels=16 * 4, num_layers=cfg.depth, num_single_layers=cfg.depth_single_blocks,
                attention_head_dim=sum(cfg.axes_dim), num_attention_heads=cfg.num_heads,
                joint_attention_dim=unet["context_in_dim"], pooled_projection_dim=unet["vec_in_dim"],
                guidance_embeds=cfg.guidance_embed, axes_dims_rope=tuple(cfg.axes_dim))


def _dit_twin(model_patcher, cfg: TinyDiTConfig, name: str):
    """The twin of a DiT: every diffusers weight read through ComfyUI's key map, which names for each one a
    ComfyUI weight, a row slice of a fused one (q/k/v, Flux's linear1), or a weight to transform (shift/scale)."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    unet = model_patcher.model.model_config.unet_config
    if cfg.family == "sd3":
        twin, key_map = SD3Transformer2DModel(**diffusers_dit_config(cfg)), comfy.utils.mmdit_to_diffusers(unet)
    else:
        twin, key_map = FluxTransformer2DModel(**diffusers_dit_config(cfg)), comfy.utils.flux_to_diffusers(unet)
    comfy_state = model_patcher.model.diffusion_model.state_dict()
    wanted = twin.state_dict()
    state = {}
    for diffusers_key, source in key_map.items():
        if diffusers_key in wanted:
            state[diffusers_key] = _read(comfy_state, source).detach().clone().float()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise RuntimeError(f"the diffusers twin of {name} lacks {len(missing)} weights, e.g. {missing[:3]}")
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def _read(comfy_state: dict, source) -> torch.Tensor:
    """One entry of ComfyUI's diffusers key map: a key, (key, (dim, start, size)) or (key, None, transform)."""
    if isinstance(source, str):
        return comfy_state[source]
    key, rows, *transform = source
    weight = comfy_state[key]
    if rows is not None:
        weight = weight.narrow(*rows)
    return transform[0](weight) if transform else weight


def flux_ids(height: int, width: int, text_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's position ids as ComfyUI makes them for one image of `height` x `width` patches (axis 0 index, axis
    1 row, axis 2 column) and text tokens at 0: what diffusers' pipeline passes as img_ids / txt_ids."""
    img = torch.zeros(height, width, 3)
    img[..., 1] = torch.arange(height)[:, None]
    img[..., 2] = torch.arange(width)[None, :]
    return img.reshape(-1, 3), torch.zeros(text_tokens, 3)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H/2·W/2, C·4]: Flux's 2x2 patches, in the (c, ph, pw) order both ComfyUI and diffusers use."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack_latents` for latents of `height` x `width`."""
    b, _, d = packed.shape
    c = d // 4
    return packed.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)
