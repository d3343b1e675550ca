"""Personalization Guider: equal to ComfyUI's conditioning-hooks construction, its identities, composition."""

import pytest
import torch


def _lora(model, seed=0, preset="attention+ff"):
    """A LoRA with non-zero B on every attention and feed-forward layer of `model` (ComfyUI-native keys)."""
    from driftless.lora.adapter import LoraAdapter

    g = torch.Generator().manual_seed(seed)
    adapter = LoraAdapter.for_model(model.model.diffusion_model, preset, 4, 4.0, g)
    with torch.no_grad():
        for layer in adapter.layers:
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * 0.2)
    return adapter.lora_state_dict()


def _setup(architecture="sd15-tiny"):
    from driftless.tinymodels.build import build_tiny_model

    model, clip, _ = build_tiny_model(architecture, 0)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    return model, enc("a photo of sks dog"), enc(""), _lora(model)


def _sample(guider, model, seed=5, steps=4, sampler="euler"):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    latent = torch.zeros(1, model.model.latent_format.latent_channels, 8, 8)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    noise = Noise_RandomNoise(seed).generate_noise({"samples": latent})
    return guider.sample(noise, latent, comfy.samplers.sampler_object(sampler), sigmas, disable_pbar=True, seed=seed)


def _hooks_oracle(model, positive, null, lora, s, cfg):
    """ComfyUI's own construction: LoRA hooks at 1 on the prompt and at s on the null prompt, stock CFGGuider."""
    import comfy.hooks
    import comfy.samplers

    pos = comfy.hooks.set_hooks_for_conditioning(positive, comfy.hooks.create_hook_lora(lora, 1.0, 0.0))
    neg = comfy.hooks.set_hooks_for_conditioning(null, comfy.hooks.create_hook_lora(lora, s, 0.0)) if s > 0 else null
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(pos, neg)
    guider.set_cfg(cfg)
    return guider


def _close(a, b, rel=1e-5):
    """fp32 rounding only: the random tiny model's samples reach hundreds, so compare relative to that."""
    assert (a - b).abs().max() <= rel * b.abs().max(), ((a - b).abs().max(), b.abs().max())


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_equals_the_conditioning_hooks_construction(comfy_host, architecture, s):
    from driftless.guidance.guider import make_guider

    model, positive, null, lora = _setup(architecture)
    ours = _sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=s, s_end=s), model)
    oracle = _sample(_hooks_oracle(model, positive, null, lora, s, 4.0), model)
    _close(ours, oracle)


@pytest.mark.parametrize("architecture", ["sd35-tiny", "flux-tiny", "flux-dev-tiny"])
@pytest.mark.parametrize("s", [0.0, 0.3])
def test_equals_the_conditioning_hooks_construction_on_dits(comfy_host, architecture, s):
    """The same identity on the DiT families, the LoRA on every linear layer of the joint and single-stream blocks
    (fused q/k/v included). For the guidance-distilled Flux dev the distilled guidance (3.5, ComfyUI's default)
    goes into both branches and CFG 4 runs real CFG on top, as "true CFG" does: the weak model replaces the
    unconditional branch there as on any model."""
    from driftless.guidance.guider import make_guider
    from driftless.tinymodels.build import build_tiny_model

    model, clip, _ = build_tiny_model(architecture, 0)
    positive, null = (clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in ("a photo of sks dog", ""))
    lora = _lora(model, preset="all linear+conv")
    ours = _sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=s, s_end=s), model)
    oracle = _sample(_hooks_oracle(model, positive, null, lora, s, 4.0), model)
    plain_cfg = _sample(_hooks_oracle(model, positive, null, lora, 1.0, 4.0), model)
    assert (oracle - plain_cfg).abs().max() > 1e-3 * oracle.abs().max()  # the weak branch changes the sample
    _close(ours, oracle)


def test_identities(comfy_host):
    import comfy.samplers
    import comfy.sd
    from comfy_extras.nodes_custom_sampler import Guider_Basic

    from driftless.guidance.guider import make_guider

    model, positive, null, lora = _setup()
    merged, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    stock = comfy.samplers.CFGGuider(merged)
    stock.set_conds(positive, null)
    stock.set_cfg(4.0)
    # s = 1: stock CFG with the LoRA loaded
    _close(_sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=1.0, s_end=1.0), model), _sample(stock, merged))
    _close(_sample(make_guider(model, positive, null, lora, cfg=4.0, mode="cfg"), model), _sample(stock, merged))
    # cfg = 1: the conditional prediction of the personalized model
    basic = Guider_Basic(merged)
    basic.set_conds(positive)
    _close(_sample(make_guider(model, positive, null, lora, cfg=1.0, s_start=0.0, s_end=0.0), model), _sample(basic, merged))
    # s actually matters
    a = _sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=0.0, s_end=0.0), model)
    b = _sample(make_guider(model, positive, null, lora, cfg=4.0, s_start=1.0, s_end=1.0), model)
    assert (a - b).abs().max() > 1e-2 * b.abs().max()


def test_the_shared_model_is_untouched(comfy_host):
    import comfy.model_management

    from driftless.guidance.guider import make_guider

    model, positive, null, lora = _setup()
    x = torch.randn(1, 4, 8, 8)
    ctx = positive[0][0]

    def predict():
        comfy.model_management.load_models_gpu([model])
        with torch.no_grad():
            return model.model.apply_model(x, torch.tensor([2.0]), c_crossattn=ctx).clone()

    before = predict()
    _sample(make_guider(model, positive, null, lora, cfg=4.0), model)
    assert torch.equal(before, predict())
    assert not any(m._forward_hooks or "forward" in m.__dict__ for m in model.model.diffusion_model.modules())


@pytest.mark.parametrize("architecture", ["sd15-tiny", "flux-dev-tiny"])
@pytest.mark.parametrize("mode", ["personalization", "autoguidance"])
def test_split_weights_equal_activation_corrections(comfy_host, architecture, mode):
    """The two ways a LoRA layer computes the weak branch's rows (guidance/branch_weights.py) give the same samples:
    a second weight W + s·Δ beside the merged one for the Linear layers, against y += (s − 1)·Δ(x) on activations
    for all layers, under a linear schedule of s (W_c rebuilt every step) and in autoguidance (two LoRAs)."""
    from driftless.guidance.guider import make_guider
    from driftless.tinymodels.build import build_tiny_model

    model, clip, _ = build_tiny_model(architecture, 0)
    positive, null = (clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in ("a photo of sks dog", ""))
    lora, weak = _lora(model, preset="all linear+conv"), _lora(model, seed=1, preset="all linear+conv")
    settings = dict(cfg=4.0, mode=mode, weak_lora=weak if mode == "autoguidance" else None, schedule="linear",
                    s_start=0.0, s_end=0.8)
    split = make_guider(model, positive, null, lora, split_weights=True, **settings)
    corrected = make_guider(model, positive, null, lora, split_weights=False, **settings)
    a, b = _sample(split, model), _sample(corrected, model)
    assert split.branch_layers.split_names and not corrected.branch_layers.split_names
    linear = {n for n, m in model.model.diffusion_model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert split.branch_layers.split_names == linear & set(split.branch_layers.names)
    _close(a, b)


@pytest.mark.parametrize("patch", ["rescale_cfg", "apg", "cfg_pp"])
def test_composes_with_cfg_patches_and_cfg_pp(comfy_host, patch):
    """Pre-/post-CFG patches and a CFG++ sampler act through the guider as through stock CFG (hooks oracle)."""
    from driftless.guidance.guider import make_guider

    model, positive, null, lora = _setup()
    sampler = "euler"
    if patch == "rescale_cfg":
        from comfy_extras.nodes_model_advanced import RescaleCFG

        model = RescaleCFG.execute(model, 0.7)[0] if hasattr(RescaleCFG, "execute") else RescaleCFG().patch(model, 0.7)[0]
    elif patch == "apg":
        from comfy_extras.nodes_apg import APG

        model = APG.execute(model, 2.0, 0.5, 0.0)[0]
    else:
        sampler = "euler_cfg_pp"
    ours = _sample(make_guider(model, positive, null, lora, cfg=3.0, s_start=0.3, s_end=0.3), model, sampler=sampler)
    oracle = _sample(_hooks_oracle(model, positive, null, lora, 0.3, 3.0), model, sampler=sampler)
    plain = _sample(make_guider(_setup()[0], positive, null, lora, cfg=3.0, s_start=0.3, s_end=0.3), model, sampler="euler")
    _close(ours, oracle)
    assert (ours - plain).abs().max() > 1e-3 * plain.abs().max()  # the patch changed something


def test_schedule_and_autoguidance(comfy_host):
    from driftless.guidance.guider import make_guider
    from driftless.guidance.schedules import strength_at

    assert strength_at(0.5, "linear", 0.0, 1.0) == 0.5
    assert strength_at(0.25, "cosine", 0.0, 1.0) == pytest.approx(0.5 * (1 - 2**-0.5))
    assert strength_at(0.9, "constant", 0.2, 0.2, start=0.0, end=0.5) == 1.0  # outside the guided part: plain CFG
    model, positive, null, lora = _setup()
    weak = _lora(model, seed=1)
    auto = _sample(make_guider(model, positive, null, lora, cfg=3.0, mode="autoguidance", weak_lora=weak), model)
    # oracle: strong LoRA hooked on the prompt, weak LoRA hooked on the same prompt as the "negative"
    import comfy.hooks
    import comfy.samplers

    g = comfy.samplers.CFGGuider(model)
    g.set_conds(comfy.hooks.set_hooks_for_conditioning(positive, comfy.hooks.create_hook_lora(lora, 1.0, 0.0)),
                comfy.hooks.set_hooks_for_conditioning(positive, comfy.hooks.create_hook_lora(weak, 1.0, 0.0)))
    g.set_cfg(3.0)
    _close(auto, _sample(g, model))
    with pytest.raises(ValueError, match="autoguidance needs a weak LoRA"):
        make_guider(model, positive, null, lora, cfg=3.0, mode="autoguidance")


def test_a_lora_for_another_model_is_refused(comfy_host):
    from driftless.guidance.guider import make_guider

    model, positive, null, _ = _setup()
    other, _, _, sdxl_lora = _setup("sdxl-tiny")
    with pytest.raises(ValueError, match=r"does not fit this model: \d+ of \d+ LoRA layers match"):
        make_guider(model, positive, null, sdxl_lora, cfg=3.0)
    with pytest.raises(ValueError, match="no LoRA layers found"):
        make_guider(model, positive, null, {"foo.weight": torch.zeros(1)}, cfg=3.0)


def _graph(**guider_overrides):
    from comfy_execution.graph_utils import GraphBuilder

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture="sd15-tiny", seed=0)
    image = g.node("EmptyImage", id="image", width=64, height=64, batch_size=1, color=0x225588)
    data = g.node("DriftlessTrainingData", id="data", clip=model.out(1), captions="a photo of sks mug",
                  images=image.out(0), vae=model.out(2))
    train = g.node(
        "DriftlessTrainLoRA", id="train", model=model.out(0), training_data=data.out(0), steps=3, learning_rate=1e-2,
        rank=4, alpha=4.0, target_layers="attention", batch_size=1, gradient_accumulation=1, optimizer="AdamW",
        lr_schedule="constant", warmup_steps=0, training_dtype="fp32", gradient_checkpointing=False, seed=0,
        null_prompt_dropout=0.2, min_snr_gamma=0.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0,
        run_name="guided", checkpoint_every=0,
    )
    pos = g.node("CLIPTextEncode", id="pos", clip=model.out(1), text="a photo of sks mug on a table")
    knobs = dict(cfg=4.0, weak_strength=0.3, schedule="linear", weak_strength_end=0.6, start=0.0, end=1.0,
                 mode="personalization")
    knobs.update(guider_overrides)
    guider = g.node("DriftlessPersonalizationGuider", id="guider", model=train.out(0), lora=train.out(1),
                    positive=pos.out(0), clip=model.out(1), **knobs)
    noise = g.node("RandomNoise", id="noise", noise_seed=1)
    sampler = g.node("KSamplerSelect", id="sampler_select", sampler_name="euler")
    sigmas = g.node("BasicScheduler", id="sigmas", model=model.out(0), scheduler="normal", steps=4, denoise=1.0)
    latent = g.node("EmptyLatentImage", id="latent", width=64, height=64, batch_size=1)
    out = g.node("SamplerCustomAdvanced", id="sample", noise=noise.out(0), guider=guider.out(0), sampler=sampler.out(0),
                 sigmas=sigmas.out(0), latent_image=latent.out(0))
    image = g.node("VAEDecode", id="decode", samples=out.out(0), vae=model.out(2))
    g.node("SaveImage", id="save", images=image.out(0), filename_prefix="guided")
    return g.finalize()


def test_guider_straight_after_train_in_one_graph(run_prompt):
    result = run_prompt(_graph())
    assert result.success, result.error
    assert len(result.files) == 1


@pytest.mark.parametrize("overrides, message", [
    ({"weak_strength": 1.5}, "weak_strength"),
    ({"start": 0.8, "end": 0.2}, "start <= end"),
])
def test_bad_settings_fail_validation(run_prompt, overrides, message):
    problems = run_prompt(_graph(**overrides), expect_valid=False)
    assert "guider" in problems and message in str(problems["guider"])



def test_branch_layers_stack_a_strided_input(comfy_host, monkeypatch):
    """A joint attention's projection gets a slice of the attention output (not contiguous): it still goes through the
    stack, and each row equals its branch's weight applied by hand."""
    import driftless.guidance.branch_weights as bw
    from driftless.lora.adapter import LoraAdapter

    monkeypatch.setattr(bw, "_free_memory", lambda device: 1 << 40)
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Linear(6, 5).requires_grad_(False)
    adapter = LoraAdapter({"proj": net}, 2, 4.0)
    for layer in adapter.layers:
        layer.down.data.normal_(generator=g)
        layer.up.data.normal_(generator=g)
    merged, layer = net.weight.clone(), adapter.layers[0]
    weak = merged - 0.7 * 2.0 * (layer.up @ layer.down)
    x = torch.randn(2, 7, 6, generator=g)[:, 2:5]  # the image slice of [text; image] tokens
    assert not x.is_contiguous()
    layers = bw.BranchLayers([adapter], split=True)
    layers.install(torch.nn.ModuleDict({"proj": net}), "cpu")
    layers.plan = bw.BatchPlan.for_batch([1, 0], x, {1: {0: -0.7}, 0: {}})
    with torch.no_grad():
        out = net(x)
    assert "proj" in layers._stacks
    torch.testing.assert_close(out[0], torch.nn.functional.linear(x[0], weak, net.bias), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], torch.nn.functional.linear(x[1], merged, net.bias), rtol=1e-5, atol=1e-6)
    layers.remove()


@pytest.mark.parametrize("layout", ["uncond first", "cond first", "three runs"])
def test_branch_layers_stack_shares_the_weight_and_gives_it_back(comfy_host, monkeypatch, layout):
    """CFG's two-halves batch goes through one stacked [W₁, W_c] per Linear whose W₁ slot is the module's own weight
    (one extra copy, not two); each row equals its branch's weight applied by hand; after `remove` every module owns
    a weight equal to W₁ again. Other layouts take the per-run path with the same rows."""
    import driftless.guidance.branch_weights as bw
    from driftless.lora.adapter import LoraAdapter

    monkeypatch.setattr(bw, "_free_memory", lambda device: 1 << 40)
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4, bias=False)).requires_grad_(False)
    adapter = LoraAdapter({"0": net[0], "1": net[1]}, 2, 4.0)
    for layer in adapter.layers:
        layer.down.data.normal_(generator=g)
        layer.up.data.normal_(generator=g)
    merged = [m.weight.clone() for m in net]
    c = -0.7  # the weak branch: W₁ + c·(α/r)·B·A
    weak = [w + c * 2.0 * (layer.up @ layer.down) for w, layer in zip(merged, adapter.layers)]
    branches = {"uncond first": [1, 0], "cond first": [0, 1], "three runs": [1, 0, 1]}[layout]
    x = torch.randn(len(branches), 3, 6, generator=g)
    layers = bw.BranchLayers([adapter], split=True)
    layers.install(net, "cpu")
    layers.plan = bw.BatchPlan.for_batch(branches, x, {1: {0: c}, 0: {}})
    assert (layers.plan.halves is not None) == (layout != "three runs")
    with torch.no_grad():  # as ComfyUI samples
        out = net(x)
    for row, branch in enumerate(branches):
        w = weak if branch == 1 else merged
        expected = torch.nn.functional.linear(torch.nn.functional.linear(x[row], w[0], net[0].bias), w[1])
        torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-6)
    if layout != "three runs":
        for name, module in zip("01", net):
            stack = layers._stacks[name].tensor
            assert module.weight.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr()
    layers.remove()
    for module, w in zip(net, merged):
        assert torch.equal(module.weight, w) and module.weight.untyped_storage().nbytes() == w.numel() * 4
