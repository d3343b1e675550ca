"""Regularizers inside real training runs and graphs on the tiny models of every family: SD1.5- and SDXL-shaped
UNets, SD3.5 (MMDiT) and Flux dev (guidance-distilled). The by-hand checks write the model's parameterization out
(ε-prediction: x_t = x0 + σ·ε, F* = ε; rectified flow: x_t = (1 − σ)·x0 + σ·ε, F* = ε − x0; both F = (x_t − x̂0)/σ
from ComfyUI's denoised x̂0) and evaluate the LoRA and the base model independently of the trainer."""

import pytest
import torch

from driftless.trainers.config import TrainConfig
from driftless.trainers.regularizers import Regularizer

FAST = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.0, targets="attention")
UNETS = ("sd15-tiny", "sdxl-tiny")
DITS = ("sd35-tiny", "flux-dev-tiny")
FAMILIES = UNETS + DITS
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/comfy/conftest.py: bit-identical sums, and faster


class Recorder(Regularizer):
    """Records each step's micro-batch (no term of its own)."""

    name = "test_recorder"

    def __init__(self):
        self.seen = []

    def loss(self, ctx):
        self.seen.append({name: getattr(ctx, name) for name in ("x0", "noise", "sigma", "x_t", "target")}
                         | {"inputs": dict(ctx.inputs)})
        return ctx.x0.new_zeros(())


def _recording(regularizer):
    """The regularizer's term at each step, recorded as its loss returns it."""
    values, original = [], regularizer.loss

    def loss(ctx):
        value = original(ctx)
        values.append(value.detach().clone())
        return value

    regularizer.loss = loss
    return values


def _moved_lora(model, data, steps=3) -> dict:
    """A LoRA trained a few steps from the fresh init (B ≠ 0): the LoRA model is no longer the base model."""
    from driftless.trainers.loop import train_lora

    return train_lora(model, data, TrainConfig(steps=steps, **{**FAST, "learning_rate": 1e-2})).adapter.lora_state_dict()


def _noised_by_hand(model, x0, noise, sigma):
    """(x_t, F*) written out for the model's parameterization."""
    import comfy.model_sampling

    sampling, s = model.get_model_object("model_sampling"), sigma.view(-1, 1, 1, 1)
    if isinstance(sampling, comfy.model_sampling.CONST):  # rectified flow: SD3, Flux
        return (1 - s) * x0 + s * noise, noise - x0
    assert isinstance(sampling, comfy.model_sampling.EPS)
    return x0 + s * noise, noise


class ByHand:
    """The MODEL with a LoRA attached on a clone (continual/seam.py's AdaptedModel), evaluated directly through
    apply_model: F = (x_t − x̂0)/σ at any LoRA strength, and, on a DiT, every attention call's q and k and every
    block's output seen through a recording attention override and forward hooks."""

    def __init__(self, model, lora: dict | None):
        from driftless.lora.adapter import LoraAdapter
        from driftless.trainers.continual.seam import AdaptedModel

        self.adapter = None if lora is None else LoraAdapter.from_state_dict(model.model.diffusion_model, lora)
        if self.adapter is not None:
            self.adapter.requires_grad_(False)
        self.seam = AdaptedModel(model, [] if self.adapter is None else [self.adapter])

    @torch.no_grad()
    def prediction(self, x_t, sigma, inputs, strength=1.0, options=None):
        if self.adapter is not None:
            self.adapter.strength = strength
        denoised = self.seam.model.apply_model(x_t, sigma, transformer_options=dict(options or {}), **inputs)
        return (x_t - denoised) / sigma.view(-1, 1, 1, 1)

    def dit_captures(self, x_t, sigma, inputs, strength):
        """(calls: (q, k, heads, skip_reshape) of every attention, block outputs in forward order, N_txt)."""
        dm = self.seam.model.diffusion_model
        calls, outputs = [], []

        def record(func, *args, **kwargs):
            calls.append((args[0], args[1], kwargs["heads"] if "heads" in kwargs else args[3], kwargs.get("skip_reshape", False)))
            return func(*args, **kwargs)

        blocks = list(getattr(dm, "joint_blocks", [])) + list(getattr(dm, "double_blocks", [])) + list(getattr(dm, "single_blocks", []))
        # MMDiT's joint block returns (context, x), Flux's double block (img, txt), its single block x = cat(txt, img);
        # Flux's next block adds into a block's output: copies
        hooks = [b.register_forward_hook(lambda m, a, out: outputs.append(out[1] if type(m).__name__ == "JointBlock" else
                                                                          (out[0] if isinstance(out, tuple) else out).clone()))
                 for b in blocks]
        try:
            self.prediction(x_t, sigma, inputs, strength, {"optimized_attention_override": record})
        finally:
            for hook in hooks:
                hook.remove()
        return calls, outputs, inputs["c_crossattn"].shape[1]


class Constant(Regularizer):
    name = "test_constant"

    def __init__(self, value):
        self.value = value

    def loss(self, ctx):
        return ctx.x0.new_tensor(self.value)


class FrozenProbe(Regularizer):
    """Records the frozen prediction and what it was computed from."""

    name = "test_frozen_probe"
    needs_frozen_prediction = True

    def __init__(self):
        self.seen = []

    def loss(self, ctx):
        self.seen.append((ctx.x_t.detach().clone(), ctx.sigma.clone(), dict(ctx.inputs), ctx.frozen_prediction.clone()))
        return ctx.x0.new_zeros(())


def test_chained_terms_add(tiny_data):
    from driftless.trainers.loop import train_lora

    model, _, _, data = tiny_data()
    plain = train_lora(model, data, TrainConfig(steps=1, **FAST))
    chained = train_lora(model, data, TrainConfig(steps=1, **FAST), [Constant(0.25), Constant(0.5)])
    assert chained.losses[0] == pytest.approx(plain.losses[0] + 0.75, abs=1e-6)


@pytest.mark.parametrize("architecture", FAMILIES)
def test_frozen_forward_equals_the_input_model(built, architecture):
    """The LoRA-at-strength-0 forward during training is exactly the input MODEL's prediction."""
    import comfy.model_management

    from driftless.trainers.loop import train_lora
    from driftless.trainers.objective import Coefficients

    model, _, _, data = built(architecture)
    probe = FrozenProbe()
    train_lora(model, data, TrainConfig(steps=3, **FAST), [probe])
    comfy.model_management.load_models_gpu([model])
    ms = model.get_model_object("model_sampling")
    for x_t, sigma, inputs, frozen in probe.seen:
        with torch.no_grad():
            denoised = model.model.apply_model(x_t, sigma, **inputs)
        base = Coefficients.of(ms, sigma).prediction(denoised, x_t)
        assert torch.equal(frozen, base)


@pytest.mark.parametrize("architecture", FAMILIES)
def test_dco_replace_trains_on_dco_alone(built, architecture):
    """With DCO in 'replace' mode the first step's loss is −log σ(0) = log 2 (LoRA starts as the base)."""
    import math

    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.dco import DCO

    model, _, _, data = built(architecture)
    result = train_lora(model, data, TrainConfig(steps=2, **FAST), [DCO(beta=1000.0, mode="replace")])
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # B = 0 at init: both errors equal


@pytest.mark.parametrize("architecture", FAMILIES)
def test_dco_by_hand(built, architecture):
    """From a LoRA that has moved, the step's DCO term is −log σ(−β(e_θ − e_base))·weight with the two squared errors
    (means over the batch) of the LoRA model and the base model, both evaluated apart from the trainer, against the
    target written out for the model's parameterization (flow: ε − x0 on SD3.5 and Flux)."""
    import torch.nn.functional as F

    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.dco import DCO

    model, _, _, data = built(architecture)
    lora = _moved_lora(model, data)
    dco, recorder = DCO(beta=50.0, weight=2.0, mode="add"), Recorder()
    values = _recording(dco)
    train_lora(model, data, TrainConfig(steps=1, **FAST), [dco, recorder], initial_lora=lora)
    seen, hand = recorder.seen[0], ByHand(model, lora)
    x_t, target = _noised_by_hand(model, seen["x0"], seen["noise"], seen["sigma"])
    torch.testing.assert_close(seen["x_t"], x_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["target"], target, rtol=1e-5, atol=1e-6)
    errors = [(hand.prediction(x_t, seen["sigma"], seen["inputs"], s) - target).square().mean() for s in (1.0, 0.0)]
    assert abs(float(errors[0] - errors[1])) > 1e-4  # the LoRA has moved
    want = 2.0 * -F.logsigmoid(-50.0 * (errors[0] - errors[1]))
    assert float(values[0]) == pytest.approx(float(want), rel=1e-4)


def test_dco_with_min_snr_weights_both_errors_per_sample(built):
    """SD1.5 (ε), min-SNR-γ = 0.01 (so every σ below 10 is weighted down), batch 2: each sample's squared error of the LoRA model and of the base model times
    min(SNR, γ)/SNR with SNR = 1/σ² (the official code's weight for ε), then the batch mean, before the log-sigmoid."""
    import torch.nn.functional as F

    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.dco import DCO

    model, _, _, data = built("sd15-tiny")
    lora = _moved_lora(model, data)
    dco, recorder = DCO(beta=50.0, mode="add"), Recorder()
    values = _recording(dco)
    train_lora(model, data, TrainConfig(steps=1, batch_size=2, min_snr_gamma=0.01, **FAST), [dco, recorder],
               initial_lora=lora)
    seen, hand = recorder.seen[0], ByHand(model, lora)
    x_t, target = _noised_by_hand(model, seen["x0"], seen["noise"], seen["sigma"])
    snr = 1 / seen["sigma"].double() ** 2
    weight = (torch.clamp(snr, max=0.01) / snr).float()
    assert weight.min() < 1  # some sample is weighted down
    errors = [((hand.prediction(x_t, seen["sigma"], seen["inputs"], s) - target).square().mean(dim=(1, 2, 3)) * weight).mean()
              for s in (1.0, 0.0)]
    want = -F.logsigmoid(-50.0 * (errors[0] - errors[1]))
    assert float(values[0]) == pytest.approx(float(want), rel=1e-4)


def test_prior_preservation_resumes_exactly(tiny_data, tmp_path):
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.prior_preservation import PriorPreservation
    from driftless.trainers.state import ResumeState, save_state

    model, clip, vae, data = tiny_data(n=2)
    class_cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    class_latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))

    def prior():
        return [PriorPreservation(class_latents, class_cond, "a photo of a cat", weight=1.0)]

    config = TrainConfig(steps=6, checkpoint_every=3, **FAST)
    straight = train_lora(model, data, config, prior())
    saved = []
    train_lora(model, data, TrainConfig(**{**config.as_dict(), "steps": 3}), prior(),
               on_checkpoint=lambda **s: (save_state(tmp_path / "p.train-state", **s), saved.append(1)))
    resumed = train_lora(model, data, config, prior(), resume=ResumeState(tmp_path / "p.train-state"))
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-6)
    without = train_lora(model, data, TrainConfig(steps=6, **FAST))
    assert without.losses[0] != pytest.approx(straight.losses[0], abs=1e-4)  # the class term is really there
    with pytest.raises(ValueError, match="trained with regularizers"):
        train_lora(model, data, config, [], resume=ResumeState(tmp_path / "p.train-state"))


@pytest.mark.parametrize("architecture", FAMILIES)
def test_prior_preservation_by_hand(built, architecture):
    """The first step's class term is λ_prior·mean‖F*' − F(x'_t', c_class)‖² on the class micro-batch drawn from the
    run's seed + CLASS_SEED_OFFSET (the LoRA is still the base model there), in the model's own latent channels (16 on
    SD3.5 and Flux) and parameterization; class latents of another channel count are refused, naming both."""
    from driftless.trainers.conditioning import model_inputs
    from driftless.trainers.data import IndexStream
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.prior_preservation import CLASS_SEED_OFFSET, PriorPreservation

    model, clip, _, data = built(architecture)
    channels = model.model.latent_format.latent_channels
    assert data.latents.shape[1] == channels == (16 if architecture in DITS else 4)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    class_latents = torch.randn(3, channels, 8, 8, generator=torch.Generator().manual_seed(4))
    prior = PriorPreservation(class_latents, cond, "a photo of a cat", weight=0.7)
    values = _recording(prior)
    config = TrainConfig(steps=1, seed=11, min_snr_gamma=0.0, timestep_min=0.2, timestep_max=0.9, **FAST)
    train_lora(model, data, config, [prior])
    generator = torch.Generator().manual_seed(11 + CLASS_SEED_OFFSET)  # the class draw, as the docstring states it
    index = IndexStream(3, generator).take(1)
    x0 = model.model.process_latent_in(class_latents[index].clone())
    noise = torch.randn(x0.shape, generator=generator)
    u = 0.2 + 0.7 * torch.rand(1, generator=generator)
    sigmas = model.get_model_object("model_sampling").sigmas  # every family's schedule is a table: ⌊u·N⌋
    sigma = sigmas[(u * len(sigmas)).long()].float()
    x_t, target = _noised_by_hand(model, x0, noise, sigma)
    hand = ByHand(model, None)  # the base model
    prediction = hand.prediction(x_t, sigma, model_inputs(hand.seam.model, cond, x0[:1]))
    want = 0.7 * (prediction - target).square().mean()
    assert float(want) > 1e-3 and float(values[0]) == pytest.approx(float(want), rel=1e-4)
    other = 4 if architecture in DITS else 16
    wrong = PriorPreservation(torch.zeros(2, other, 8, 8), cond, "a photo of a cat")
    with pytest.raises(ValueError, match=f"class latents have {other} channels and the training latents {channels}"):
        train_lora(model, data, TrainConfig(steps=1, **FAST), [wrong])


def _graph(architecture):
    from comfy_execution.graph_utils import GraphBuilder

    from driftless.trainers.regularizers.apt import APTConfig
    from driftless.trainers.regularizers.dco import DCOConfig
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchorConfig
    from driftless.trainers.regularizers.prior_preservation import PriorPreservationConfig

    g = GraphBuilder(prefix="")
    model = g.node("DriftlessTinyModel", id="model", architecture=architecture, seed=0)
    image = g.node("EmptyImage", id="image", width=64, height=64, batch_size=2, color=0x884422)
    data = g.node("DriftlessTrainingData", id="data", clip=model.out(1), captions="a photo of sks dog",
                  images=image.out(0), vae=model.out(2))
    classes = g.node("DriftlessClassImages", id="classes", model=model.out(0), clip=model.out(1), vae=model.out(2),
                     class_prompt="a photo of a dog", count=3, seed=0, width=64, height=64, steps=2, cfg=3.0,
                     sampler_name="euler", scheduler="normal")
    # every regularizer at its node's defaults, but DCO added to the denoising loss (its default replaces it)
    anchor = g.node("DriftlessParameterAnchor", id="anchor", **ParameterAnchorConfig().as_dict())
    dco = g.node("DriftlessDCO", id="dco", **{**DCOConfig().as_dict(), "mode": "add"}, chain=anchor.out(0))
    apt = g.node("DriftlessAPT", id="apt", **APTConfig().as_dict(), chain=dco.out(0))
    prior = g.node("DriftlessPriorPreservation", id="prior", clip=model.out(1), class_prompt="a photo of a dog",
                   **PriorPreservationConfig().as_dict(), class_latents=classes.out(1), chain=apt.out(0))
    train = g.node(
        "DriftlessTrainLoRA", id="train", model=model.out(0), training_data=data.out(0), regularizer=prior.out(0),
        steps=3, learning_rate=1e-3, rank=4, alpha=4.0, target_layers="attention", batch_size=1, gradient_accumulation=1,
        optimizer="AdamW", lr_schedule="constant", warmup_steps=0, training_dtype="fp32", gradient_checkpointing=False,
        seed=0, null_prompt_dropout=0.1, min_snr_gamma=5.0, timestep_min=0.0, timestep_max=1.0, max_grad_norm=1.0,
        run_name=f"reg_{architecture}", checkpoint_every=0,
    )
    g.node("DriftlessSaveLoRA", id="save", lora=train.out(1), filename=f"reg/{architecture}", overwrite=True)
    g.node("SaveImage", id="classes_out", images=classes.out(0), filename_prefix="classes")
    return g.finalize()


@pytest.mark.parametrize("architecture", FAMILIES)
def test_all_regularizers_in_a_graph(run_prompt, comfy_host, architecture):
    """Tiny Model → Training Data → Class Images → anchor → DCO → APT → prior preservation → Train LoRA → Save LoRA,
    through ComfyUI's executor, on every family: the LoRA records the chain, the class images the base model drew
    have its latent channels."""
    from driftless.lora.files import load_lora
    from driftless.lora.storage import load_safetensors
    from driftless.trainers.regularizers.prior_preservation import PriorPreservationConfig

    result = run_prompt(_graph(architecture))
    assert result.success, result.error
    meta = load_lora(comfy_host.base_directory / "models" / "loras" / "reg" / f"{architecture}.safetensors").metadata
    assert [r["name"] for r in meta["regularizers"]] == ["parameter_anchor", "dco", "apt", "prior_preservation"]
    assert meta["regularizers"][3] == {"name": "prior_preservation", "weight": PriorPreservationConfig().weight,
                                       "class_prompt": "a photo of a dog", "class_images": 3}
    cache = comfy_host.base_directory / "models" / "driftless" / "class_images"
    drawn = {tuple(load_safetensors(f)[0]["latents"].shape) for f in cache.glob("*.safetensors")}
    assert (3, 16 if architecture in DITS else 4, 8, 8) in drawn


def test_class_images_are_cached_by_model_prompt_and_seed(comfy_host):
    from driftless.tinymodels.build import build_tiny_model
    from driftless.trainers.class_images import generate_class_latents

    model, clip, _ = build_tiny_model("sd15-tiny", 0)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    folder = comfy_host.base_directory / "models" / "cache_test"

    def make(seed, prompt="a photo of a dog"):
        return generate_class_latents(model, enc(prompt), enc(""), count=5, seed=seed, width=64, height=64, steps=2, cfg=3.0,
                                      sampler="euler", scheduler="normal", cache_folder=folder, base_fingerprint="fp",
                                      prompt=prompt)

    first, cached_first = make(0)
    again, cached_again = make(0)
    other, cached_other = make(1)
    assert first.shape == (5, 4, 8, 8) and not cached_first and cached_again and not cached_other
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len(list(folder.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("architecture", [*FAMILIES, "flux-tiny"])  # Flux schnell too: no guidance embedding
def test_apt_terms_start_at_zero_and_watch_every_transformer_block(built, architecture):
    """At init (B = 0) the LoRA model is the base model: RS and AA are exactly 0 and the step equals plain training
    (UNet: the cross-attention APT installs computes what ComfyUI's attention computes; DiT: the model's own
    attention computes the output, so the step is bit-identical). What is watched: every transformer block of a UNet
    (its self-attention output and cross-attention map over the prompt's 77 tokens); every block of a DiT (its image
    stream and its joint attention's image × text block, over SD3.5's 154 CLIP + T5 tokens or Flux's 256 T5 ones)."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = built(architecture)
    plain = train_lora(model, data, TrainConfig(steps=1, **FAST))
    apt = APT(adaptive_adjustment=False, representation_weight=1.0, attention_weight=1000.0)
    seen, original = {}, apt.loss

    def counting(ctx):  # what the loss is given: both forwards' captures (the frozen features as statistics)
        for name in ("train", "frozen"):
            stats = apt.captured[name]["stats"] if name == "frozen" or architecture not in UNETS else {}
            seen[name] = (len(apt.captured[name].get("features", [])) + sum(mean.shape[0] for mean, _ in stats.values()),
                          len(apt.captured[name]["maps"]))
        seen["map"] = tuple(apt.captured["train"]["maps"][0].shape)
        return original(ctx)

    apt.loss = counting
    values = _recording(apt)
    watched = train_lora(model, data, TrainConfig(steps=1, **FAST), [apt])
    assert float(values[0]) == 0.0
    if architecture in (*DITS, "flux-tiny"):
        assert watched.losses == plain.losses
        dm = model.model.diffusion_model
        blocks = len(dm.joint_blocks) if architecture == "sd35-tiny" else len(dm.double_blocks) + len(dm.single_blocks)
        assert seen["map"] == (1, 16, 154 if architecture == "sd35-tiny" else 256)  # 8×8 latent in 2×2 patches: 16 tokens
    else:
        assert watched.losses[0] == pytest.approx(plain.losses[0], rel=1e-5)
        blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in model.model.diffusion_model.modules())
        assert seen["map"][-1] == 77  # cross-attention over the prompt's tokens
    assert seen["train"] == seen["frozen"] == (blocks, blocks)
    assert apt.captured == {}  # released once the loss is formed


def _std_mean(x):
    std, mean = torch.std_mean(x.double(), dim=1, correction=0)
    return mean, std


@pytest.mark.parametrize("architecture", DITS)
def test_apt_on_a_dit_by_hand(built, architecture):
    """From a LoRA that has moved, each of APT's two DiT terms equals its definition evaluated apart from the trainer:
    one forward with the LoRA and one without on the step's x_t, σ and prompt, every attention call's q and k recorded
    through a plain attention override and every block's output through forward hooks. The text comes first in
    each joint sequence (cat(context, x) in SD3, cat(txt, img) in Flux): RS = Σ_blocks mean_(b,c) (μ_θ − μ_base)² +
    mean_(b,c) (σ_θ − σ_base)² over each block's image tokens (Flux single blocks: x[:, N_txt:]); AA = mean over
    blocks of mean (A_θ − A_base)², A = softmax(q·kᵀ/√d) over all keys, rows of image queries, columns of text keys,
    head mean. SD3.5's first block has a second, image-only attention (MMDiT-X): recorded, not a joint one."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = built(architecture)
    lora = _moved_lora(model, data)
    terms = {}
    for term, settings in (("RS", dict(representation_weight=0.3, attention_weight=0.0)),
                           ("AA", dict(representation_weight=0.0, attention_weight=50.0))):
        apt, recorder = APT(adaptive_adjustment=False, **settings), Recorder()
        values = _recording(apt)
        train_lora(model, data, TrainConfig(steps=1, **FAST), [apt, recorder], initial_lora=lora)
        terms[term] = float(values[0])
    seen, hand = recorder.seen[0], ByHand(model, lora)
    (calls_t, blocks_t, n_txt), (calls_b, blocks_b, _) = (hand.dit_captures(seen["x_t"], seen["sigma"], seen["inputs"], s)
                                                          for s in (1.0, 0.0))
    n_img = 16
    dm = model.model.diffusion_model
    singles = len(getattr(dm, "single_blocks", []))
    images = [b[:, n_txt:] if i >= len(blocks_t) - singles else b for i, b in enumerate(blocks_t)], \
             [b[:, n_txt:] if i >= len(blocks_b) - singles else b for i, b in enumerate(blocks_b)]
    assert all(b.shape[1] == n_img for b in images[0])
    rs = sum(((m_t - m_b).square().mean() + (s_t - s_b).square().mean()) for (m_t, s_t), (m_b, s_b) in
             zip(map(_std_mean, images[0]), map(_std_mean, images[1])))

    def maps(calls):
        out = []
        for q, k, heads, skip_reshape in calls:
            q, k = (t if skip_reshape else t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k))
            if q.shape[2] == n_txt + n_img:  # a joint attention
                probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
                out.append(probs[:, :, n_txt:, :n_txt].mean(dim=1))
        return out

    maps_t, maps_b = maps(calls_t), maps(calls_b)
    assert len(calls_t) == len(blocks_t) + (architecture == "sd35-tiny") and len(maps_t) == len(blocks_t)
    aa = sum((a - b).square().mean() for a, b in zip(maps_t, maps_b)) / len(maps_t)
    print(f"{architecture}: RS {float(rs):.6g} (trainer {terms['RS'] / 0.3:.6g}), AA {float(aa):.6g} "
          f"(trainer {terms['AA'] / 50.0:.6g})")
    assert float(rs) > 1e-4 and float(aa) > 1e-9  # the LoRA has moved both
    assert terms["RS"] == pytest.approx(0.3 * float(rs), rel=1e-4)
    assert terms["AA"] == pytest.approx(50.0 * float(aa), rel=1e-4)


@pytest.mark.parametrize("architecture", DITS)
def test_apt_in_bf16_training_on_a_dit(built, architecture):
    """Under bf16 autocast the maps keep float32 logits (bf16 would round them by ~1e-2, far above the maps'
    differences): the second step's APT term is that of fp32 training within a few percent (the two runs' LoRAs
    already differ by one bf16 step)."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = built(architecture)
    terms = {}
    for dtype in ("fp32", "bf16"):
        apt = APT(adaptive_adjustment=False)
        values = _recording(apt)
        result = train_lora(model, data, TrainConfig(steps=2, dtype=dtype, **{**FAST, "learning_rate": 1e-2}), [apt])
        assert all(torch.isfinite(torch.tensor(result.losses)))
        terms[dtype] = [float(v) for v in values]
    assert terms["bf16"][0] == terms["fp32"][0] == 0.0
    assert terms["bf16"][1] == pytest.approx(terms["fp32"][1], rel=0.1) and terms["fp32"][1] > 0


@pytest.mark.parametrize("architecture", FAMILIES)
def test_apt_regularizes_after_the_lora_moves(built, architecture):
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = built(architecture)
    apt = APT(adaptive_adjustment=True, representation_weight=1.0, attention_weight=1000.0)
    terms = _recording(apt)
    result = train_lora(model, data, TrainConfig(steps=6, **{**FAST, "learning_rate": 1e-2}), [apt])
    assert float(terms[0]) == 0.0 and max(map(float, terms[1:])) > 0.0  # zero while the LoRA is still the base model
    assert bool(apt.indicator.seen.any())
    assert all(torch.isfinite(torch.tensor(result.losses)))


@pytest.mark.parametrize("architecture", FAMILIES)
def test_apt_with_gradient_checkpointing_trains_the_same_and_holds_nothing_after(built, architecture):
    """Checkpointing reruns the trained blocks in backward, patches included: those reruns add no captures (none
    are held after the step) and the run matches the one without recomputation."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = built(architecture)
    settings = dict(adaptive_adjustment=True, representation_weight=1.0, attention_weight=1000.0)
    config = {**FAST, "learning_rate": 1e-2}
    plain = train_lora(model, data, TrainConfig(steps=3, **config), [APT(**settings)])
    apt = APT(**settings)
    recomputed = train_lora(model, data, TrainConfig(steps=3, gradient_checkpointing=True, **config), [apt])
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-5)
    a, b = plain.adapter.lora_state_dict(), recomputed.adapter.lora_state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert apt.captured == {}


@pytest.mark.parametrize("architecture", FAMILIES)
def test_prior_preservation_batched_equals_its_own_forward(built, architecture):
    """Class examples joined to the training forward give the same run as a separate forward."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.prior_preservation import PriorPreservation

    model, clip, _, data = built(architecture)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    channels = data.latents.shape[1]
    latents = torch.randn(3, channels, 8, 8, generator=torch.Generator().manual_seed(7))
    batched = train_lora(model, data, TrainConfig(steps=4, **FAST), [PriorPreservation(latents, cond, "cat")])
    separate_reg = PriorPreservation(latents, cond, "cat")
    separate_reg.extra_examples = lambda *a: None  # as for class images of another size
    separate = train_lora(model, data, TrainConfig(steps=4, **FAST), [separate_reg])
    assert batched.losses == pytest.approx(separate.losses, rel=1e-5)
    bigger = PriorPreservation(torch.randn(2, channels, 12, 12, generator=torch.Generator().manual_seed(8)), cond, "cat")
    other_size = train_lora(model, data, TrainConfig(steps=2, **FAST), [bigger])
    assert all(torch.isfinite(torch.tensor(other_size.losses)))


@pytest.mark.parametrize("architecture", FAMILIES)
@pytest.mark.parametrize("form", ["paper", "code"])
def test_parameter_anchor_moves_the_step_by_its_gradient_once(built, form, architecture):
    """SGD's first step is −lr·gradient. From the same starting LoRA, one step with the anchor (two accumulated
    micro-batches) lands −lr·λ·∂term/∂θ away from plain LoRA's, the term written per layer by hand and
    differentiated by autograd: the closed-form gradient is right and counted once per optimizer step."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchor

    model, _, _, data = built(architecture)
    start = train_lora(model, data, TrainConfig(steps=2, **FAST)).adapter.lora_state_dict()  # B ≠ 0
    config = TrainConfig(steps=1, optimizer="SGD", max_grad_norm=0.0, grad_accumulation=2, **FAST)
    weight = 50.0
    plain = train_lora(model, data, config, initial_lora=start).adapter.lora_state_dict()
    anchored = train_lora(model, data, config, [ParameterAnchor(weight=weight, form=form)], initial_lora=start).adapter.lora_state_dict()
    moved = 0.0
    for prefix in (k[: -len(".lora_down.weight")] for k in start if k.endswith(".lora_down.weight")):
        down = start[f"{prefix}.lora_down.weight"].clone().requires_grad_(True)
        up = start[f"{prefix}.lora_up.weight"].clone().requires_grad_(True)
        scale = float(start[f"{prefix}.alpha"]) / down.shape[0]
        if form == "paper":
            term = (scale * up.flatten(1) @ down.flatten(1)).square().sum()
        else:
            term = down.square().sum() + up.square().sum()
        grad_down, grad_up = torch.autograd.grad(weight * term, (down, up))
        for key, grad in ((f"{prefix}.lora_down.weight", grad_down), (f"{prefix}.lora_up.weight", grad_up)):
            torch.testing.assert_close(anchored[key] - plain[key], -FAST["learning_rate"] * grad, rtol=1e-3, atol=2e-7)
            moved = max(moved, float((anchored[key] - plain[key]).abs().max()))
    assert moved > 1e-4  # the anchor's share of the step, far above the tolerance
