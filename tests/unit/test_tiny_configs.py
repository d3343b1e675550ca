"""Tiny model configs: the derived widths follow the real architectures' rules."""

import pytest

from driftless.tinymodels.configs import CONFIGS, SD3_CONTEXT_WIDTH, SDXL_SIZE_EMBEDDING_WIDTH, is_dit

UNETS = sorted(n for n in CONFIGS if not is_dit(n))
DITS = sorted(n for n in CONFIGS if is_dit(n))


@pytest.mark.parametrize("name", UNETS)
def test_widths(name):
    cfg = CONFIGS[name]
    unet = cfg.unet_config()
    assert unet["context_dim"] == sum(te.hidden_size for te in cfg.text_encoders.values())
    # depths are given per block: num_res_blocks input blocks and num_res_blocks + 1 output blocks per level
    blocks = unet["num_res_blocks"]
    assert len(blocks) == len(cfg.channel_mult)
    assert len(unet["transformer_depth"]) == sum(blocks)
    assert len(unet["transformer_depth_output"]) == sum(n + 1 for n in blocks)
    # every attention level splits its width into whole heads
    for mult, depth in zip(cfg.channel_mult, cfg.transformer_depth):
        if depth:
            assert (cfg.model_channels * mult) % cfg.head_channels == 0


def test_family_specific_conditioning():
    sd15, sdxl = CONFIGS["sd15-tiny"], CONFIGS["sdxl-tiny"]
    assert sd15.adm_in_channels is None and set(sd15.text_encoders) == {"l"}
    assert set(sdxl.text_encoders) == {"l", "g"}
    assert sdxl.adm_in_channels == sdxl.text_encoders["g"].hidden_size + 6 * 256 == 32 + SDXL_SIZE_EMBEDDING_WIDTH
    assert sdxl.unet_config()["use_linear_in_transformer"] and not sd15.unet_config()["use_linear_in_transformer"]
    assert sdxl.transformer_depth[0] == 0  # like SDXL: no attention at the full-resolution level


@pytest.mark.parametrize("name", DITS)
def test_dit_widths(name):
    """The DiT configs keep the rules ComfyUI's classes and detector assume: SD3 is 64 wide per block with one
    64-wide head per block and CLIP-L+G padded to T5-XXL's 4096; Flux splits its width into heads whose width
    is the sum of the RoPE axes (each even), reads CLIP-L's pooled output and T5's tokens."""
    cfg = CONFIGS[name]
    unet = cfg.unet_config()
    assert unet["in_channels"] == unet["out_channels"] == cfg.latent_channels == 16
    if cfg.family == "sd3":
        assert cfg.width == 64 * cfg.depth
        assert unet["context_embedder_config"]["params"] == {"in_features": SD3_CONTEXT_WIDTH, "out_features": cfg.width}
        assert cfg.text_encoders["t5xxl"].d_model == SD3_CONTEXT_WIDTH
        l, g = cfg.text_encoders["l"], cfg.text_encoders["g"]
        assert l.hidden_size + g.hidden_size <= SD3_CONTEXT_WIDTH
        assert unet["adm_in_channels"] == l.hidden_size + (g.projection_dim or g.hidden_size)
        assert cfg.default_resolution // cfg.vae_downscale // 2 <= cfg.pos_embed_max_size
    else:
        assert cfg.num_heads * sum(cfg.axes_dim) == cfg.hidden_size
        assert all(axis % 2 == 0 for axis in cfg.axes_dim)
        assert unet["vec_in_dim"] == cfg.text_encoders["l"].hidden_size
        assert unet["context_in_dim"] == cfg.text_encoders["t5xxl"].d_model
        assert unet["guidance_embed"] == name.startswith("flux-dev")


def test_largest_resolution_is_the_sd3_position_grid():
    """SD3 places a latent of up to pos_embed_max_size 2×2 patches a side, 8 pixels per latent cell: the bench model's
    grid of 16 patches reaches 256 px; Flux's RoPE has no grid."""
    assert CONFIGS["sd35-bench"].pos_embed_max_size == 16 and CONFIGS["sd35-bench"].largest_resolution == 16 * 2 * 8
    assert CONFIGS["flux-dev-bench"].largest_resolution is None and CONFIGS["sdxl-bench"].largest_resolution is None
