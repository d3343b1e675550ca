"""The training objective against independent computations: diffusers' DDPM scheduler and hand formulas."""

import pytest
import torch


def _sd15(comfy_host):
    from driftless.tinymodels.build import build_tiny_model

    model, clip, _ = build_tiny_model("sd15-tiny", 0)
    context = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))[0][0]
    return model, context


def _diffusers_scheduler():
    from diffusers import DDPMScheduler

    # Stable Diffusion 1.x/2.x/XL training schedule
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _ours(model_sampling, apply, x0, noise, t):
    from driftless.trainers.objective import Coefficients, denoising_loss, sample_sigmas

    sigma = sample_sigmas(model_sampling, (t.float() + 0.5) / 1000)  # u inside timestep t's bin
    coefficients = Coefficients.of(model_sampling, sigma)
    x_t = coefficients.noisy(x0, noise)
    prediction = coefficients.prediction(apply(x_t, sigma), x_t)
    return denoising_loss(prediction, coefficients.target(x0, noise)), coefficients, sigma


def test_eps_loss_equals_diffusers_ddpm_to_1e5(comfy_host):
    """‖ε − ε_θ(√ᾱ x0 + √(1−ᾱ) ε, t)‖² with diffusers' add_noise and the raw UNet equals our loss."""
    model, context = _sd15(comfy_host)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([3, 500, 990])
    noisy = _diffusers_scheduler().add_noise(x0, noise, t)
    with torch.no_grad():
        eps_hat = model.model.diffusion_model(noisy, t.float(), context=context.repeat(3, 1, 1))
        reference = ((eps_hat - noise) ** 2).mean(dim=(1, 2, 3))
        ms = model.get_model_object("model_sampling")
        ours, _, sigma = _ours(ms, lambda x, s: model.model.apply_model(x, s, c_crossattn=context.repeat(3, 1, 1)), x0, noise, t)
    alphas_cumprod = _diffusers_scheduler().alphas_cumprod[t]
    torch.testing.assert_close(sigma, ((1 - alphas_cumprod) / alphas_cumprod).sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert reference.min() > 0.1  # a random model: the check compares non-trivial numbers


def test_v_prediction_target_is_diffusers_velocity(comfy_host):
    import comfy.model_management
    import comfy.model_sampling

    model, context = _sd15(comfy_host)

    class VSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
        pass

    v_model = model.clone()
    v_model.add_object_patch("model_sampling", VSampling(model.model.model_config))
    comfy.model_management.load_models_gpu([v_model])
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 800])
    scheduler = _diffusers_scheduler()
    with torch.no_grad():
        v_hat = v_model.model.diffusion_model(scheduler.add_noise(x0, noise, t), t.float(), context=context.repeat(2, 1, 1))
        reference = ((v_hat - scheduler.get_velocity(x0, noise, t)) ** 2).mean(dim=(1, 2, 3))
        ms = v_model.get_model_object("model_sampling")
        ours, coefficients, _ = _ours(ms, lambda x, s: v_model.model.apply_model(x, s, c_crossattn=context.repeat(2, 1, 1)), x0, noise, t)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coefficients.target(x0, noise), scheduler.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)


def test_flow_target_and_noising_by_hand(comfy_host):
    """Rectified flow (ComfyUI's CONST sampling): x_t = (1−σ)x0 + σε and target ε − x0."""
    import comfy.model_sampling

    from driftless.trainers.objective import Coefficients

    class Flow(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    ms = Flow(None)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    c = Coefficients.of(ms, sigma)
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(c.noisy(x0, noise), (1 - s) * x0 + s * noise)
    torch.testing.assert_close(c.target(x0, noise), noise - x0)


def test_eps_target_is_exactly_the_noise_and_min_snr_by_hand(comfy_host):
    from driftless.trainers.objective import Coefficients, min_snr_weight

    model, _ = _sd15(comfy_host)
    ms = model.get_model_object("model_sampling")
    sigma = torch.tensor([0.05, 1.0, 10.0])
    noise = torch.randn(3, 4, 4, 4)
    c = Coefficients.of(ms, sigma)
    assert torch.equal(c.target(torch.randn(3, 4, 4, 4), noise), noise)
    snr = 1 / sigma**2  # ε-model: SNR = 1/σ², weight = min(SNR, γ)/SNR
    torch.testing.assert_close(min_snr_weight(c, 5.0), torch.clamp(snr, max=5.0) / snr)
    assert torch.equal(min_snr_weight(c, 0.0), torch.ones(3))


@pytest.mark.parametrize("u, t", [(0.0, 0), (0.5, 500), (0.9999, 999)])
def test_noise_level_maps_to_integer_timesteps(comfy_host, u, t):
    from driftless.trainers.objective import sample_sigmas

    model, _ = _sd15(comfy_host)
    ms = model.get_model_object("model_sampling")
    assert sample_sigmas(ms, torch.tensor([u])).item() == pytest.approx(ms.sigmas[t].item())
