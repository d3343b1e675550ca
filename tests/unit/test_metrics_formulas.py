"""DreamBench formulas on synthetic embeddings with hand-derived answers, and the prompt rules CLIP-T uses."""

import math

import pytest
import torch

from driftless.metrics import formulas
from driftless.metrics.prompts import contains_identifier, neutralize, per_image, split_identifiers, split_lines

S = 1 / math.sqrt(2)


def test_pairwise_similarity_by_hand():
    # generated: e1, e2; reference: e1, (e1 + e2)/√2 scaled by 3 (scale must not matter)
    generated = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    reference = torch.tensor([[5.0, 0.0], [3.0, 3.0]])
    per_image = formulas.pairwise_similarity(generated, reference)
    torch.testing.assert_close(per_image, torch.tensor([(1 + S) / 2, (0 + S) / 2]))
    assert per_image.mean().item() == pytest.approx((1 + S + 0 + S) / 4, abs=1e-7)


def test_mean_of_rows_is_the_mean_over_all_pairs():
    g = torch.Generator().manual_seed(0)
    generated, reference = torch.randn(7, 16, generator=g), torch.randn(3, 16, generator=g)
    brute = sum(torch.dot(a, b) / (a.norm() * b.norm()) for a in generated for b in reference) / (7 * 3)
    assert formulas.pairwise_similarity(generated, reference).mean().item() == pytest.approx(brute.item(), abs=1e-6)


def test_cosine_is_raw_signed_and_bounded():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    torch.testing.assert_close(formulas.rowwise_similarity(a, b), torch.tensor([1.0, S, -1.0]))
    with pytest.raises(ValueError, match="aligned rows"):
        formulas.rowwise_similarity(a, b[:2])
    with pytest.raises(ValueError, match="at least one"):
        formulas.pairwise_similarity(a, b[:0])


def test_identical_embeddings_give_one_and_opposite_minus_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 32, generator=g)
    torch.testing.assert_close(formulas.rowwise_similarity(x, 2 * x), torch.ones(5))
    torch.testing.assert_close(formulas.rowwise_similarity(x, -x), -torch.ones(5))


def test_summary_uses_the_sample_std():
    s = formulas.summary([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["n"] == 4 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert formulas.summary([0.3])["std"] == 0.0
    assert formulas.summary([])["n"] == 0 and math.isnan(formulas.summary([])["mean"])


def test_torchmetrics_scale_is_100_max_cos_0():
    assert formulas.torchmetrics_scale(0.31) == pytest.approx(31.0)
    assert formulas.torchmetrics_scale(-0.2) == 0.0
    torch.testing.assert_close(formulas.torchmetrics_scale(torch.tensor([-0.5, 0.25])), torch.tensor([0.0, 25.0]))


@pytest.mark.parametrize("prompt, noun, expected", [
    ("a sks dog in the snow", "dog", "a dog in the snow"),
    ("a photo of sks", "dog", "a photo of dog"),
    ("a sks dog", "", "a dog"),
    ("A SKS Dog on the beach", "dog", "A Dog on the beach"),
    ("sks dogs playing", "dog", "dogs playing"),
    ("a photo of sks, on the beach", "vase", "a photo of vase, on the beach"),
    ("asks a sks teddy bear", "teddy bear", "asks a teddy bear"),
    ("a dog", "dog", "a dog"),
])
def test_identifier_removed_or_replaced_by_the_class_noun(prompt, noun, expected):
    assert neutralize(prompt, ["sks"], noun) == expected


def test_several_identifiers_with_special_characters():
    assert neutralize("a <new1> cat next to a zwx vase", split_identifiers("<new1>, zwx"), "") == "a cat next to a vase"
    assert contains_identifier("photo of <new1>", ["<new1>"]) and not contains_identifier("asks", ["sks"])


def test_prompts_per_image():
    assert per_image(["p"], 3) == ["p", "p", "p"]
    assert per_image(["a", "b", "c"], 3) == ["a", "b", "c"]
    assert per_image(["a", "b"], 4) == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="3 lines for 4 images"):
        per_image(["a", "b", "c"], 4)
    with pytest.raises(ValueError, match="at least one prompt"):
        per_image([], 2)
    assert split_lines("  a photo\n\n b \n") == ["a photo", "b"]
