"""Tiny model configs: the derived widths follow the real architectures' rules."""

import pytest

from driftless.tinymodels.configs import CONFIGS, SDXL_SIZE_EMBEDDING_WIDTH


@pytest.mark.parametrize("name", sorted(CONFIGS))
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
