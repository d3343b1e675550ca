"""The built-in tiny models: checkpoint-shaped, seeded, and runnable through ComfyUI's executor."""

import hashlib
import inspect

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


DITS = ["sd35-tiny", "flux-dev-tiny", "flux-tiny"]


@pytest.mark.parametrize("name", DITS)
def test_comfyui_detects_the_dit_family_from_the_weights(comfy_host, name):
    """ComfyUI's checkpoint detector, fed the tiny DiT's state dict, picks the class it was built with (SD3, Flux
    with a guidance embedding, FluxSchnell without) and every setting it reads from the weights. The SD3 config
    comes back whole; for Flux the detector assumes full-size 128-wide heads (hidden_size / 128 heads, axes
    16/56/56), which is what a tiny width has to override, as the SD1.5 head width is for the UNets."""
    import comfy.model_detection

    from driftless.tinymodels.build import build_unet
    from driftless.tinymodels.configs import CONFIGS

    cfg = CONFIGS[name]
    patcher = build_unet(cfg, seed=0)
    built = patcher.model.model_config
    detected = comfy.model_detection.model_config_from_unet(patcher.model.diffusion_model.state_dict(), "")
    assert type(detected) is type(built)
    assert type(built).__name__ == {"sd35-tiny": "SD3", "flux-dev-tiny": "Flux", "flux-tiny": "FluxSchnell"}[name]
    head_settings = {"num_heads", "axes_dim"} if cfg.family == "flux" else set()
    for key, value in built.unet_config.items():
        if key not in head_settings | {"dtype"} and key in detected.unet_config:
            assert detected.unet_config[key] == value, key
    assert set(cfg.unet_config()) - head_settings <= set(detected.unet_config)


@pytest.mark.parametrize("name", DITS)
def test_dit_diffusers_twin_computes_the_same_function(comfy_host, name):
    """The diffusers SD3Transformer2DModel / FluxTransformer2DModel twin, loaded through ComfyUI's own key maps,
    gives ComfyUI's output (same latents, text tokens, pooled vector, timestep and, for Flux dev, guidance) to
    float32 rounding: the reference the DiT LoRA exports are checked against."""
    from driftless.tinymodels.build import build_tiny_model
    from driftless.tinymodels.configs import CONFIGS
    from driftless.tinymodels.diffusers_twin import diffusers_twin, flux_ids, pack_latents, unpack_latents

    cfg = CONFIGS[name]
    model, _, _ = build_tiny_model(name, 1)
    twin = diffusers_twin(model, name)
    unet = cfg.unet_config()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.8])
    diffusion_model = model.model.diffusion_model
    with torch.no_grad():
        if cfg.family == "flux":
            context = torch.randn(2, 7, unet["context_in_dim"], generator=g)
            pooled = torch.randn(2, unet["vec_in_dim"], generator=g)
            guidance = torch.tensor([3.5, 2.0]) if cfg.guidance_embed else None
            ours = diffusion_model(x, t, context, y=pooled, guidance=guidance)
            img_ids, txt_ids = flux_ids(4, 4, 7)
            packed = twin(hidden_states=pack_latents(x), encoder_hidden_states=context, pooled_projections=pooled,
                          timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance).sample
            reference = unpack_latents(packed, 8, 8)
        else:
            context = torch.randn(2, 9, unet["context_embedder_config"]["params"]["in_features"], generator=g)
            pooled = torch.randn(2, unet["adm_in_channels"], generator=g)
            ours = diffusion_model(x, t * 1000, context, y=pooled)
            reference = twin(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                             timestep=t * 1000).sample
    assert reference.abs().max() > 0.1
    assert ((ours - reference).abs().max() / reference.abs().max()) < 1e-5
    assert torch.equal(pack_latents(x)[0, 0, :4], x[0, 0, :2, :2].flatten())  # channel 0's first 2x2 patch


def test_same_seed_same_dit_weights(comfy_host):
    from driftless.tinymodels.build import build_tiny_model

    a, b, c = (build_tiny_model("flux-dev-tiny", seed) for seed in (3, 3, 4))
    for part in (lambda m: m[0].model.diffusion_model, lambda m: m[1].cond_stage_model, lambda m: m[2].first_stage_model):
        assert _params_digest(part(a)) == _params_digest(part(b))
        assert _params_digest(part(a)) != _params_digest(part(c))


def dit_txt2img(architecture: str, seed: int, prefix: str, cfg: float = 3.0):
    """The DiT text-to-image graph as ComfyUI's own templates build it: a 16-channel SD3 empty latent and, for
    a guidance-distilled Flux, FluxGuidance on the prompt and CFG 1."""
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture=architecture, seed=seed)
    pos = g.node("CLIPTextEncode", id="pos", clip=model.out(1), text="a photo of a cat")
    neg = g.node("CLIPTextEncode", id="neg", clip=model.out(1), text="")
    positive = pos.out(0)
    if architecture == "flux-dev-tiny":
        positive = g.node("FluxGuidance", id="guidance", conditioning=positive, guidance=3.5).out(0)
        cfg = 1.0
    latent = g.node("EmptySD3LatentImage", id="latent", width=64, height=64, batch_size=1)
    sampled = g.node("KSampler", id="sampler", model=model.out(0), positive=positive, negative=neg.out(0),
                     latent_image=latent.out(0), seed=seed, steps=3, cfg=cfg, sampler_name="euler",
                     scheduler="simple", denoise=1.0)
    image = g.node("VAEDecode", id="decode", samples=sampled.out(0), vae=model.out(2))
    g.node("SaveImage", id="save", images=image.out(0), filename_prefix=prefix)
    return g.finalize()


@pytest.mark.parametrize("architecture", DITS)
def test_dit_text_to_image_graph_runs_and_is_reproducible(run_prompt, architecture):
    import numpy as np
    from PIL import Image

    results = [run_prompt(dit_txt2img(architecture, seed, f"{architecture}_{i}")) for i, seed in enumerate((7, 7, 8))]
    for result in results:
        assert result.success, result.error
    pixels = [np.asarray(Image.open(r.files[0])) for r in results]
    assert pixels[0].shape == (64, 64, 3)
    assert pixels[0].std() > 1  # a NaN anywhere would have come out as a flat black image
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_dit_checkpoint_round_trip(comfy_host, tmp_path):
    """A tiny Flux written as one checkpoint (ComfyUI's saving layout: diffusion model, text encoders, `vae.`) reads
    back into the same weights."""
    from driftless.tinymodels.build import build_tiny_model
    from driftless.tinymodels.checkpoint import load_tiny_checkpoint, save_tiny_checkpoint

    model, clip, vae = build_tiny_model("flux-dev-tiny", 5)
    path = save_tiny_checkpoint(tmp_path / "flux.safetensors", "flux-dev-tiny", model, clip, vae)
    loaded = load_tiny_checkpoint(path)
    for a, b in zip((model.model.diffusion_model, clip.cond_stage_model, vae.first_stage_model),
                    (loaded[0].model.diffusion_model, loaded[1].cond_stage_model, loaded[2].first_stage_model)):
        assert _params_digest(a) == _params_digest(b)


@pytest.mark.parametrize("source", ["flux-dev-tiny", "shapes"])
def test_a_deep_clone_rebuilds_the_same_weights(comfy_host, source):
    """ComfyUI 0.33's deep clones (its own TrainLoraNode, multi-GPU) rebuild a model from the loader's recipe
    (`cached_patcher_init`), as the core loaders register it: the pack's tiny and shapes models register theirs,
    and the rebuilt module holds the same weights in a separate copy."""
    from driftless.shapes import weights
    from driftless.tinymodels.build import build_tiny_model

    model = build_tiny_model(source, 2)[0] if source != "shapes" else weights.load_model(weights.SHIPPED)[0]
    factory, args = model.cached_patcher_init[:2]
    rebuilt = factory(*args, disable_dynamic=True)
    assert rebuilt.model is not model.model
    assert _params_digest(rebuilt.model.diffusion_model) == _params_digest(model.model.diffusion_model)
    if "force_deepcopy" in inspect.signature(model.clone).parameters:  # 0.33 on
        clone = model.clone(force_deepcopy=True)
        assert clone.model is not model.model
        assert _params_digest(clone.model.diffusion_model) == _params_digest(model.model.diffusion_model)
