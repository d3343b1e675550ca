"""The drift benchmark's generator, scores and classifier plumbing (pure torch/numpy, no ComfyUI)."""

import math

import numpy as np
import pytest
import torch

from driftless.bench.drift import classifier, dataset, metrics


def test_captions_match_pixels():
    """Classifier-free check: the caption's colour at the shape's centre, its background in the corner."""
    images, pictures = dataset.draw(60, seed=3)
    for image, p in zip(images.numpy(), pictures):
        r, c = int(p.centre[0]), int(p.centre[1])
        assert np.allclose(image[r, c], dataset.COLOURS[p.colour], atol=1e-6), p
        assert np.allclose(image[0, 0], dataset.BACKGROUNDS[p.background], atol=1e-6), p
        assert p.caption == f"a {p.colour} {p.shape} on a {p.background} background"


@pytest.mark.parametrize("shape, area", [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5), ("cross", 5 / 9)])
def test_shape_coverage_is_the_shapes_area(shape, area):
    """Covered pixels / bounding box = the shape's area ratio (circle π/4, square 1, triangle 1/2, cross 5/9)."""
    side = 18
    mask = dataset.shape_mask(shape, side, (16.0, 16.0))
    assert mask.sum() / side**2 == pytest.approx(area, abs=0.04)


def test_draw_is_seeded_and_covers_every_combination():
    a, pa = dataset.draw(400, seed=1)
    b, pb = dataset.draw(400, seed=1)
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, dataset.draw(400, seed=2)[0])
    assert {p.caption for p in pa} == set(dataset.all_captions())
    assert a.shape == (400, 32, 32, 3) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1


def test_subject_is_new_to_the_pretraining():
    captions = " ".join(dataset.all_captions())
    assert dataset.TRIGGER not in captions and dataset.SUBJECT_SHAPE not in dataset.SHAPES
    assert dataset.SUBJECT_COLOUR not in dataset.COLOURS.values()
    subject = dataset.draw_subject(4, seed=7)
    assert subject.shape == (4, 32, 32, 3)
    orange = torch.tensor(dataset.SUBJECT_COLOUR)
    assert ((subject - orange).abs().sum(-1) < 1e-6).any(dim=(1, 2)).all()  # every picture shows the orange cross
    assert dataset.subject_caption(colour="blue") == "a blue sks on a white background"


def test_labels_index_the_tables():
    _, pictures = dataset.draw(10, seed=0)
    shapes, colours = dataset.labels(pictures)
    assert [dataset.SHAPES[i] for i in shapes] == [p.shape for p in pictures]
    assert [list(dataset.COLOURS)[i] for i in colours] == [p.colour for p in pictures]


def test_classifier_shapes_and_augmentation():
    net = classifier.ShapeColourNet()
    images, _ = dataset.draw(5, seed=0)
    s, c = net(images)
    assert s.shape == (5, 3) and c.shape == (5, 4) and net.features(images).shape == (5, classifier.FEATURES)
    aug = classifier.augment(images, torch.Generator().manual_seed(0))
    assert aug.shape == images.shape and 0 <= aug.min() and aug.max() <= 1
    assert (aug - images).abs().mean() < 0.1  # a little noise and blur, not a different picture


def test_fidelity_and_similarity_on_hand_made_features():
    e = torch.eye(3)
    assert metrics.subject_fidelity(e[:1], e[:1]) == pytest.approx(1.0)
    assert metrics.subject_fidelity(e[:1], e[1:]) == pytest.approx(0.0)
    # every sample against every subject picture: (1 + 0) / 2
    assert metrics.subject_fidelity(e[:1], e[:2]) == pytest.approx(0.5)
    assert metrics.paired_similarity(torch.tensor([[1.0, 0], [0, 2]]), torch.tensor([[2.0, 0], [1, 1]])) == pytest.approx(
        (1 + 1 / math.sqrt(2)) / 2)


def test_rates_and_rmse_on_hand_made_inputs():
    assert metrics.match_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])) == 0.5
    assert metrics.prior_accuracy([0, 1, 2], [0, 0, 0], [0, 1, 1], [0, 1, 0]) == pytest.approx(1 / 3)
    a = torch.zeros(2, 4, 4, 3)
    b = a.clone()
    b[0] = 0.5  # half the pixels differ by 0.5: RMSE = sqrt(0.25 / 2)
    assert metrics.paired_rmse(b, a) == pytest.approx(math.sqrt(0.125))
    assert metrics.paired_rmse(a, a) == 0.0
