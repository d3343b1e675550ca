"""Regularizers inside real training runs and graphs on the tiny SD1.5- and SDXL-shaped models."""

import pytest
import torch

from driftless.trainers.config import TrainConfig
from driftless.trainers.regularizers import Regularizer

FAST = dict(rank=4, alpha=4.0, learning_rate=2e-3, null_prompt_dropout=0.0, targets="attention")


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


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
def test_frozen_forward_equals_the_input_model(tiny_data, architecture):
    """The LoRA-at-strength-0 forward during training is exactly the input MODEL's prediction."""
    import comfy.model_management

    from driftless.trainers.loop import train_lora
    from driftless.trainers.objective import Coefficients

    model, _, _, data = tiny_data(architecture)
    probe = FrozenProbe()
    train_lora(model, data, TrainConfig(steps=3, **FAST), [probe])
    comfy.model_management.load_models_gpu([model])
    ms = model.get_model_object("model_sampling")
    for x_t, sigma, inputs, frozen in probe.seen:
        with torch.no_grad():
            denoised = model.model.apply_model(x_t, sigma, **inputs)
        base = Coefficients.of(ms, sigma).prediction(denoised, x_t)
        assert torch.equal(frozen, base)


def test_dco_replace_trains_on_dco_alone(tiny_data):
    """With DCO in 'replace' mode the first step's loss is −log σ(0) = log 2 (LoRA starts as the base)."""
    import math

    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.dco import DCO

    model, _, _, data = tiny_data()
    result = train_lora(model, data, TrainConfig(steps=2, **FAST), [DCO(beta=1000.0, mode="replace")])
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # B = 0 at init: both errors equal


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


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
def test_all_regularizers_in_a_graph(run_prompt, comfy_host, architecture):
    from driftless.lora.files import load_lora
    from driftless.trainers.regularizers.prior_preservation import PriorPreservationConfig

    result = run_prompt(_graph(architecture))
    assert result.success, result.error
    meta = load_lora(comfy_host.base_directory / "models" / "loras" / "reg" / f"{architecture}.safetensors").metadata
    assert [r["name"] for r in meta["regularizers"]] == ["parameter_anchor", "dco", "apt", "prior_preservation"]
    assert meta["regularizers"][3] == {"name": "prior_preservation", "weight": PriorPreservationConfig().weight,
                                       "class_prompt": "a photo of a dog", "class_images": 3}
    cache = list((comfy_host.base_directory / "models" / "driftless" / "class_images").glob("*.safetensors"))
    assert cache


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


@pytest.mark.parametrize("architecture", ["sd15-tiny", "sdxl-tiny"])
def test_apt_terms_start_at_zero_and_watch_every_transformer_block(tiny_data, architecture):
    """At init (B = 0) the LoRA model is the base model: RS and AA are exactly 0, and the
    cross-attention APT installs computes what ComfyUI's attention computes."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = tiny_data(architecture)
    plain = train_lora(model, data, TrainConfig(steps=1, **FAST))
    apt = APT(adaptive_adjustment=False, representation_weight=1.0, attention_weight=1000.0)
    seen, original = {}, apt.loss

    def counting(ctx):  # what the loss is given: both forwards' captures (the frozen features as statistics)
        seen.update({(p, kind): len(v) for p, kinds in apt.captured.items() for kind, v in kinds.items()})
        seen["frozen", "features"] = sum(mean.shape[0] for mean, _ in apt.captured["frozen"]["stats"].values())
        seen["tokens"] = apt.captured["train"]["maps"][0].shape[-1]
        return original(ctx)

    apt.loss = counting
    watched = train_lora(model, data, TrainConfig(steps=1, **FAST), [apt])
    assert watched.losses[0] == pytest.approx(plain.losses[0], rel=1e-5)
    blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in model.model.diffusion_model.modules())
    assert seen[("train", "features")] == seen[("frozen", "features")] == blocks
    assert seen[("train", "maps")] == seen[("frozen", "maps")] == blocks
    assert seen["tokens"] == 77  # cross-attention over the prompt's tokens
    assert apt.captured == {}  # released once the loss is formed


def test_apt_regularizes_after_the_lora_moves(tiny_data):
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers import StepContext
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = tiny_data()
    apt = APT(adaptive_adjustment=True, representation_weight=1.0, attention_weight=1000.0)
    terms = []
    original = apt.loss

    def recording(ctx: StepContext):
        value = original(ctx)
        terms.append(value.item())
        return value

    apt.loss = recording
    result = train_lora(model, data, TrainConfig(steps=6, **{**FAST, "learning_rate": 1e-2}), [apt])
    assert terms[0] == 0.0 and max(terms[1:]) > 0.0  # zero while the LoRA is still the base model
    assert bool(apt.indicator.seen.any())
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_apt_with_gradient_checkpointing_trains_the_same_and_holds_nothing_after(tiny_data):
    """Checkpointing reruns the trained blocks in backward, patches included: those reruns add no captures (none
    are held after the step) and the run matches the one without recomputation."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.apt import APT

    model, _, _, data = tiny_data()
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


def test_prior_preservation_batched_equals_its_own_forward(tiny_data):
    """Class examples joined to the training forward give the same run as a separate forward."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.prior_preservation import PriorPreservation

    model, clip, _, data = tiny_data()
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    batched = train_lora(model, data, TrainConfig(steps=4, **FAST), [PriorPreservation(latents, cond, "cat")])
    separate_reg = PriorPreservation(latents, cond, "cat")
    separate_reg.extra_examples = lambda *a: None  # as for class images of another size
    separate = train_lora(model, data, TrainConfig(steps=4, **FAST), [separate_reg])
    assert batched.losses == pytest.approx(separate.losses, rel=1e-5)
    bigger = PriorPreservation(torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(8)), cond, "cat")
    other_size = train_lora(model, data, TrainConfig(steps=2, **FAST), [bigger])
    assert all(torch.isfinite(torch.tensor(other_size.losses)))


@pytest.mark.parametrize("form", ["paper", "code"])
def test_parameter_anchor_moves_the_step_by_its_gradient_once(tiny_data, form):
    """SGD's first step is −lr·gradient. From the same starting LoRA, one step with the anchor (two accumulated
    micro-batches) lands −lr·λ·∂term/∂θ away from plain LoRA's, the term written per layer by hand and
    differentiated by autograd: the closed-form gradient is right and counted once per optimizer step."""
    from driftless.trainers.loop import train_lora
    from driftless.trainers.regularizers.parameter_anchor import ParameterAnchor

    model, _, _, data = tiny_data()
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
