"""The drift benchmark's model: SD1.5-layout checkpoint round trip, latent rescaling, a pretraining smoke run."""

import dataclasses

import pytest
import torch


@pytest.fixture
def random_model(comfy_host):
    from driftless.tinymodels.build import build_tiny_model

    return build_tiny_model("drift-bench", 0)


def test_checkpoint_round_trips_through_the_node(random_model, tmp_path):
    from driftless.lora.storage import load_safetensors
    from driftless.shapes import pretrain, weights

    model, clip, vae = random_model
    with torch.no_grad():  # make the weights differ from the loader's seeded init
        for p in model.model.diffusion_model.parameters():
            p.add_(0.01)
    pretrain.save_checkpoint(tmp_path / pretrain.CHECKPOINT, model, clip, vae, {})
    sd, meta = load_safetensors(tmp_path / pretrain.CHECKPOINT)
    assert {k.split(".")[0] for k in sd} == {"model", "cond_stage_model", "first_stage_model"}
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in sd)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in sd)
    assert meta["architecture"] == '"drift-bench"'

    loaded_model, loaded_clip, loaded_vae = weights.load_model(tmp_path)
    for a, b in ((model.model.diffusion_model, loaded_model.model.diffusion_model),
                 (vae.first_stage_model, loaded_vae.first_stage_model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tokens = clip.tokenize("a red circle on a black background")
    assert torch.equal(clip.encode_from_tokens(tokens), loaded_clip.encode_from_tokens(tokens))
    assert loaded_vae.encode(torch.rand(1, 32, 32, 3)).shape == (1, 4, 8, 8)


def test_latent_rescaling_keeps_reconstructions(random_model):
    from driftless.shapes import pretrain

    ae = random_model[2].first_stage_model
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = ae.decode(ae.encode(x))
        pretrain.rescale_latents(ae, x)
        z = ae.encode(x)
        after = ae.decode(z)
    assert float(z.std()) == pytest.approx(1 / 0.18215, rel=1e-4)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_pretraining_smoke_run_lowers_the_loss(random_model):
    from driftless.shapes import dataset, pretrain

    model, clip, vae = random_model
    settings = dataclasses.replace(pretrain.SMOKE, unet_steps=24, unet_batch=4, unet_lr=2e-3, ema_decay=0.0)
    images, pictures = dataset.draw(16, seed=0)
    latents = pretrain.encode_images(vae, images)
    conds = torch.cat([pretrain.encode_text(clip, p.caption) for p in pictures])
    with torch.inference_mode(False), torch.enable_grad():
        losses = pretrain.train_unet(model, latents, conds, pretrain.encode_text(clip, ""), settings, log=lambda *_: None)
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8


def test_min_snr_weight():
    from driftless.shapes import pretrain

    sigma = torch.tensor([0.1, 0.5, 10.0])
    # SNR = 1/σ²: min(SNR, 5)/SNR = min(1, 5σ²)
    assert torch.allclose(pretrain.min_snr_weight(sigma, 5.0), torch.tensor([0.05, 1.0, 1.0]))
    assert torch.equal(pretrain.min_snr_weight(sigma, 0.0), torch.ones(3))


def test_recipe_hash_follows_settings_and_code_not_comments(tmp_path, monkeypatch):
    from driftless.shapes import pretrain, weights

    full = weights.recipe_hash(pretrain.PRESETS["full"])
    assert full != weights.recipe_hash(pretrain.PRESETS["quick"])
    assert weights.cache_dir(pretrain.PRESETS["full"]).name == f"shapes-{full}"
    source = (weights.SHIPPED.parent / "classifier.py").read_text()
    for name in weights.RECIPE_FILES:
        (tmp_path / name).write_text((weights.SHIPPED.parent / name).read_text())
    monkeypatch.setattr(weights, "SHIPPED", tmp_path / "weights")
    assert weights.recipe_hash(pretrain.PRESETS["full"]) == full
    (tmp_path / "classifier.py").write_text('"""Reworded."""\n# a comment\n' + source.split('"""', 2)[2])
    assert weights.recipe_hash(pretrain.PRESETS["full"]) == full  # docstrings and comments are not the recipe
    (tmp_path / "classifier.py").write_text(source.replace("lr=2e-3", "lr=1e-3"))
    assert weights.recipe_hash(pretrain.PRESETS["full"]) != full


def test_shipped_weights_were_made_by_the_current_recipe():
    """Fails when the recipe (shapes/dataset.py, classifier.py, pretrain.py, the full preset, the drift-bench config)
    changed and the shipped weights were not rebuilt: run `./driftless bench drift --rebuild-weights` and commit
    shapes/weights/."""
    from driftless.shapes import pretrain, weights

    assert weights.is_shipped_layout(weights.SHIPPED), f"no shipped weights in {weights.SHIPPED}"
    assert weights.recorded_recipe(weights.SHIPPED) == weights.recipe_hash(pretrain.PRESETS["full"]), (
        "the shipped shapes model was made by another recipe: rebuild it with ./driftless bench drift --rebuild-weights")
    assert weights.folder_for("full") == weights.SHIPPED


def test_shipped_weights_load_as_fp32_and_read_shapes_as_when_built(comfy_host):
    import json

    from driftless.shapes import classifier, pretrain, weights

    model, clip, vae = weights.load_model(weights.SHIPPED)
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {torch.float32}
    report = json.loads((weights.SHIPPED / pretrain.REPORT).read_text())
    net = weights.load_classifier(weights.SHIPPED)
    assert classifier.accuracy(net) == report["classifier_accuracy"]  # the classifier ships as it was trained
    assert min(report["classifier_accuracy"].values()) > 0.95
    latent = vae.encode(torch.rand(1, 32, 32, 3))
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()


def test_shipped_text_encoder_is_the_seeded_one_and_another_is_refused(comfy_host, tmp_path):
    """The text encoder is not shipped (never trained): the loader rebuilds it from the recipe's seed and refuses
    UNet weights recorded with another one."""
    import shutil

    from driftless.lora.storage import load_safetensors, save_safetensors_atomic
    from driftless.shapes import pretrain, weights
    from driftless.tinymodels.build import build_tiny_model

    _, clip, _ = weights.load_model(weights.SHIPPED)
    _, seeded, _ = build_tiny_model(pretrain.ARCHITECTURE, pretrain.PRESETS["full"].seed)
    a, b = clip.cond_stage_model.state_dict(), seeded.cond_stage_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.copytree(weights.SHIPPED, tmp_path / "w")
    unet, meta = load_safetensors(tmp_path / "w" / weights.SHIPPED_UNET)
    save_safetensors_atomic(unet, tmp_path / "w" / weights.SHIPPED_UNET, raw_metadata={**meta, weights.TEXT_ENCODER_KEY: '"0"'})
    with pytest.raises(ValueError, match="another text encoder.*--rebuild-weights"):
        weights.load_model(tmp_path / "w")


def test_first_use_builds_the_model_with_progress_then_loads_it(comfy_host, tmp_path, monkeypatch):
    """The node pretrains on first use, reporting through ComfyUI's progress bar (what the web UI and the headless
    runner show) up to the last unit; the second use loads the cache without building."""
    import comfy.utils

    from driftless.nodes.pretrained_model import PretrainedShapesModel
    from driftless.shapes import pretrain, weights

    tiny = dataclasses.replace(pretrain.SMOKE, vae_steps=2, pool=8, unet_steps=3)
    monkeypatch.setitem(pretrain.PRESETS, "quick", tiny)
    monkeypatch.setenv("DRIFTLESS_CACHE", str(tmp_path))
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, **_: seen.append((value, total)))
    try:
        model, clip, vae = PretrainedShapesModel.execute("quick").result
        total = 2 + tiny.vae_steps + tiny.unet_steps
        # every unit on 0.3.75; 0.33 throttles the hook between the first and the last update
        assert seen[0] == (1, total) and seen[-1] == (total, total) and all(t == total for _, t in seen)
        assert [v for v, _ in seen] == sorted(set(v for v, _ in seen))
        assert weights.is_built(weights.cache_dir(tiny))
        seen.clear()
        again = PretrainedShapesModel.execute("quick").result[0]
        assert seen == []  # cached: nothing built
        a, b = model.model.diffusion_model.state_dict(), again.model.diffusion_model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
