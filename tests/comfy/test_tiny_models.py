"""The built-in tiny models: checkpoint-shaped, seeded, and runnable through ComfyUI's executor."""

import hashlib

import pytest
import torch

ARCHS = ["sd15-tiny", "sdxl-tiny"]


@pytest.mark.parametrize("name", ["sd15-tiny", "sdxl-tiny", "sd15-bench", "sdxl-bench"])
def test_comfyui_detects_the_architecture_from_the_weights(comfy_host, name):
    """ComfyUI's checkpoint detector, fed the tiny UNet's state dict, recovers the config it was built from.

    This is what makes the tiny models stand-ins for real checkpoints: the weights have exactly the
    layout model_detection expects of an SD1.5 / SDXL UNet of that width.
    """
    import comfy.model_detection

    from driftless.tinymodels.build import build_unet
    from driftless.tinymodels.configs import CONFIGS

    cfg = CONFIGS[name]
    patcher = build_unet(cfg, seed=0)
    sd = patcher.model.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    wanted = cfg.unet_config()
    for key in ("model_channels", "channel_mult", "transformer_depth", "transformer_depth_output", "context_dim",
                "adm_in_channels", "use_linear_in_transformer", "num_res_blocks", "in_channels", "out_channels"):
        assert detected[key] == wanted[key], key
    # detection also tells SD1.5 (no ADM) from SDXL (pooled text + 6x256 size embedding)
    expected_adm = None if cfg.family == "sd15" else cfg.text_encoders["g"].hidden_size + 6 * 256
    assert detected["adm_in_channels"] == expected_adm


def _params_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", ARCHS)
def test_same_seed_same_weights_other_seed_other_weights(comfy_host, name):
    from driftless.tinymodels.build import build_tiny_model

    a, b, c = (build_tiny_model(name, seed) for seed in (3, 3, 4))
    for part in (lambda m: m[0].model.diffusion_model, lambda m: m[1].cond_stage_model, lambda m: m[2].first_stage_model):
        assert _params_digest(part(a)) == _params_digest(part(b))
        assert _params_digest(part(a)) != _params_digest(part(c))


def test_sdxl_conditioning_carries_the_pooled_embedding(comfy_host):
    from driftless.tinymodels.build import build_tiny_model
    from driftless.tinymodels.configs import CONFIGS

    cfg = CONFIGS["sdxl-tiny"]
    model, clip, _ = build_tiny_model("sdxl-tiny", 0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a dog"))
    tokens, extra = cond[0]
    assert tokens.shape == (1, 77, cfg.context_dim)  # CLIP-L and CLIP-G hidden states concatenated
    assert extra["pooled_output"].shape == (1, cfg.text_encoders["g"].hidden_size)
    # the model turns the pooled embedding + sizes into the ADM vector the UNet requires
    adm = model.model.encode_adm(pooled_output=extra["pooled_output"], width=64, height=64)
    assert adm.shape == (1, cfg.adm_in_channels)


@pytest.mark.parametrize("architecture", ARCHS)
def test_text_to_image_graph_runs_and_is_reproducible(run_prompt, txt2img, architecture):
    """DriftlessTinyModel -> CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage through the real executor."""
    first = run_prompt(txt2img(architecture, seed=7, prefix=f"{architecture}_a"))
    second = run_prompt(txt2img(architecture, seed=7, prefix=f"{architecture}_b"))
    other = run_prompt(txt2img(architecture, seed=8, prefix=f"{architecture}_c"))
    for result in (first, second, other):
        assert result.success, result.error
        assert len(result.files) == 1 and result.files[0].stat().st_size > 0
    from PIL import Image
    import numpy as np

    pixels = [np.asarray(Image.open(r.files[0])) for r in (first, second, other)]
    assert pixels[0].shape == (64, 64, 3)
    assert np.array_equal(pixels[0], pixels[1])  # fp32 on CPU is bit-reproducible
    assert not np.array_equal(pixels[0], pixels[2])
