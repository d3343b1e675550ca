"""Tiny random CLIP / DINO folders saved like Hugging Face repositories and loaded through the real loader:
embeddings against transformers' own processors and models, local-only loading, errors, the cache, the metrics."""

import json
import shutil
import socket

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from driftless.metrics import backbones, formulas
from driftless.metrics.evaluate import drift_metrics, personalization_metrics
from driftless.tinymodels.metrics_backbones import save_clip, save_dino


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics_models")
    save_clip(root / "clip-tiny", seed=0)
    save_clip(root / "clip_vision" / "clip-vision-tiny", seed=1, vision_only=True)
    save_dino(root / "facebook" / "dino-tiny", seed=2, version=1)
    save_dino(root / "dinov2-tiny", seed=3, version=2)
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("nothing here")
    return root


@pytest.fixture(scope="module")
def loaded(folders):
    return {name: backbones.load_backbone(folders / name) for name in
            ("clip-tiny", "clip_vision/clip-vision-tiny", "facebook/dino-tiny", "dinov2-tiny")}


def _images(n, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, h, w, 3, generator=g) * 255).round() / 255  # exact 8-bit values, as loaded from files


def _pil(images):
    return [Image.fromarray((img.numpy() * 255).round().astype(np.uint8)) for img in images]


def test_find_models_lists_backbones_by_relative_name_and_kind(folders):
    found = backbones.find_models([folders])
    assert {k: v[1] for k, v in found.items()} == {
        "clip-tiny": "clip", "clip_vision/clip-vision-tiny": "clip_vision", "facebook/dino-tiny": "dino",
        "dinov2-tiny": "dino"}
    assert backbones.find_models([folders / "missing"]) == {}


def test_clip_embeddings_equal_transformers_per_image_path(folders, loaded):
    """One image at a time through AutoProcessor + CLIPModel, as a user of transformers would do it (the torchvision
    processors: transformers 5.x default, use_fast=True in 4.x; the PIL ones differ by one 8-bit level here and there)."""
    clip = loaded["clip-tiny"]
    model = transformers.CLIPModel.from_pretrained(str(folders / "clip-tiny"), local_files_only=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(folders / "clip-tiny"), local_files_only=True,
                                                           use_fast=True)
    images, texts = _images(3), ["a photo of dog", "a cat on the beach", "a photo of dog"]
    with torch.no_grad():
        expected_img = torch.cat([backbones.features(model.get_image_features(
            **processor(images=p, return_tensors="pt"))) for p in _pil(images)])
        expected_txt = torch.cat([backbones.features(model.get_text_features(
            **processor(text=[t], return_tensors="pt", padding=True))) for t in texts])
    torch.testing.assert_close(clip.embed_images(images), expected_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clip.embed_texts(texts), expected_txt, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, cls", [("facebook/dino-tiny", "ViTModel"), ("dinov2-tiny", "Dinov2Model")])
def test_dino_cls_embeddings_equal_transformers_per_image_path(folders, loaded, name, cls):
    dino = loaded[name]
    assert type(dino.model).__name__ == cls
    model = transformers.AutoModel.from_pretrained(str(folders / name), local_files_only=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(str(folders / name), local_files_only=True,
                                                                use_fast=True)
    images = _images(3, 50, 70, seed=1)
    with torch.no_grad():
        expected = torch.cat([model(**processor(images=p, return_tensors="pt")).last_hidden_state[:, 0]
                              for p in _pil(images)])
    torch.testing.assert_close(dino.embed_images(images), expected, rtol=1e-4, atol=1e-5)


def test_features_unwraps_transformers_4_and_5_return_types():
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.clip.modeling_clip import CLIPVisionModelOutput

    t = torch.randn(2, 4)
    assert backbones.features(t) is t  # transformers 4.x: a tensor
    assert backbones.features(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 3, 4), pooler_output=t)) is t
    assert backbones.features(CLIPVisionModelOutput(image_embeds=t)) is t


def test_loading_never_touches_the_network(folders, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access during backbone loading")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("clip-tiny", "dinov2-tiny"):
        assert backbones.load_backbone(folders / name).embed_images(_images(1)).shape[0] == 1


def test_missing_files_are_named_with_the_folder_and_what_is_expected(folders, tmp_path):
    broken = tmp_path / "clip-broken"
    shutil.copytree(folders / "clip-tiny", broken)
    (broken / "preprocessor_config.json").unlink()
    for f in ("tokenizer.json", "vocab.json"):  # transformers 4.x writes no tokenizer.json for this tokenizer
        (broken / f).unlink(missing_ok=True)
    with pytest.raises(backbones.MissingWeights) as err:
        backbones.load_backbone(broken)
    message = str(err.value)
    assert str(broken) in message and "preprocessor_config.json" in message and "tokenizer.json" in message
    assert "model.safetensors" in message and "nothing is downloaded" in message

    pickled = tmp_path / "dino-pickled"
    shutil.copytree(folders / "dinov2-tiny", pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(backbones.MissingWeights, match="pytorch_model.bin present, but only safetensors"):
        backbones.load_backbone(pickled)
    with pytest.raises(backbones.MissingWeights, match="does not exist"):
        backbones.load_backbone(tmp_path / "nowhere")


def test_weights_that_do_not_fit_the_config_are_refused(folders, tmp_path):
    wrong = tmp_path / "dino-wrong"
    shutil.copytree(folders / "dinov2-tiny", wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(backbones.MissingWeights, match="do not match config.json"):
        backbones.load_backbone(wrong)


def test_reference_embeddings_are_cached_by_content(loaded):
    dino = loaded["dinov2-tiny"]
    refs = _images(2, seed=5)
    hits = dino.cache_hits
    first = dino.embed_images(refs, cache=True)
    again = dino.embed_images(refs.clone(), cache=True)
    assert again is first and dino.cache_hits == hits + 1
    other = dino.embed_images(_images(2, seed=6), cache=True)
    assert dino.cache_hits == hits + 1 and not torch.equal(other, first)


def test_personalization_metrics_against_the_formulas(loaded):
    clip, dino = loaded["clip-tiny"], loaded["facebook/dino-tiny"]
    generated, reference = _images(4, seed=7), _images(3, 60, 60, seed=8)
    prompts = ["a photo of sks dog", "a sks dog on the beach"]
    result = personalization_metrics(generated, reference, prompts, clip=clip, dino=dino, identifiers=["sks"],
                                     class_noun="dog")
    assert result.clip_prompts == ["a photo of dog", "a photo of dog", "a dog on the beach", "a dog on the beach"]
    g, r = clip.embed_images(generated), clip.embed_images(reference)
    t = clip.embed_texts(result.clip_prompts)
    expected_clip_i = [np.mean([formulas.cosine_matrix(g[i : i + 1], r[j : j + 1]).item() for j in range(3)])
                       for i in range(4)]
    assert result.scores["clip_i"].values == pytest.approx(expected_clip_i, abs=1e-6)
    assert result.scores["clip_t"].values == pytest.approx(
        [torch.nn.functional.cosine_similarity(g[i], t[i], dim=0).item() for i in range(4)], abs=1e-6)
    dg, dr = dino.embed_images(generated), dino.embed_images(reference)
    assert result.scores["dino"].mean == pytest.approx(formulas.cosine_matrix(dg, dr).mean().item(), abs=1e-6)
    assert result.scores["dino"].summary["n"] == 4


def test_vision_only_clip_gives_clip_i_and_says_why_there_is_no_clip_t(loaded):
    result = personalization_metrics(_images(2), _images(1), ["a sks dog"], clip=loaded["clip_vision/clip-vision-tiny"])
    assert set(result.scores) == {"clip_i"} and "no text tower" in result.notes[0]


def test_drift_is_one_for_identical_samples_and_lower_for_different_ones(loaded):
    clip, dino = loaded["clip-tiny"], loaded["dinov2-tiny"]
    base = _images(3, seed=9)
    same = drift_metrics(base, base.clone(), clip=clip, dino=dino)
    for scores in same.scores.values():
        assert scores.values == pytest.approx([1.0] * 3, abs=1e-5)
    other = drift_metrics(base, _images(3, seed=10), clip=clip, dino=dino, prompts=["a dog", "a sks dog", "a cat"],
                          identifiers=["sks"])
    assert all(v < 1 - 1e-4 for v in other.scores["dino"].values)
    assert "a sks dog" in other.notes[0]
    with pytest.raises(ValueError, match="pair up"):
        drift_metrics(base, base[:2], dino=dino)
