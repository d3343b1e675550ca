"""Continual personalization math and the concept pool file, against hand computations."""

import math

import pytest
import torch

from driftless.trainers.continual.dsc import dsc_loss
from driftless.trainers.continual.ewc import FlatAnchor, ewc_penalty
from driftless.trainers.continual.fisher import diagonal_fisher, fold, unit_sum
from driftless.trainers.continual.pool import Concept, ConceptPool, load_pool
from driftless.trainers.continual.scores import (dc_cross_entropy, dc_errors, dc_logits, dc_scores, repeat_for_concepts,
                                                 sample_past, sharpness, soft_cross_entropy)

# three concepts, two images, two latent elements
TARGET = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
PREDICTIONS = torch.tensor([
    [[1.0, 0.0], [1.0, 1.0]],  # c_0: errors 1, 0
    [[1.0, 1.0], [0.0, 0.0]],  # c_1: errors 2, 2
    [[0.0, 0.0], [1.0, 3.0]],  # c_2: errors 0, 4
])


def test_dc_scores_by_hand():
    assert dc_errors(PREDICTIONS, TARGET).tolist() == [[1.0, 2.0, 0.0], [0.0, 2.0, 4.0]]
    for tau in (1.0, 2.0):
        for row, errors in enumerate(([1, 2, 0], [0, 2, 4])):
            weights = [math.exp(-e / tau) for e in errors]
            expected = [w / sum(weights) for w in weights]
            torch.testing.assert_close(dc_scores(PREDICTIONS, TARGET, tau)[row], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    # −log p(c_2 | x), averaged over the two images
    p = dc_scores(PREDICTIONS, TARGET)
    expected = -(math.log(p[0, 2]) + math.log(p[1, 2])) / 2
    assert dc_cross_entropy(dc_logits(PREDICTIONS, TARGET), 2).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        dc_logits(PREDICTIONS, TARGET, 0.0)


def test_sharpness_by_hand():
    """Largest probabilities 1/2 (equal logits), 3/4 (odds 3:1) and 1/(1 + e^-10) = 0.99995: median 3/4, one of three
    above 0.99; τ = 10 on the third vector (logits / 10) gives 1/(1 + e^-1) = 0.731, none above."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [10.0, 0.0]])
    s = sharpness(logits)
    assert s["median_largest_probability"] == pytest.approx(0.75, rel=1e-6)
    assert s["share_sharp"] == pytest.approx(1 / 3) and s["score_vectors"] == 3
    softer = sharpness(logits[2:] / 10)
    assert softer["median_largest_probability"] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6) and softer["share_sharp"] == 0


def test_soft_cross_entropy_by_hand():
    teacher, student = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[math.log(2.0), math.log(2.0)]])
    # p_T = (1/4, 3/4), p_S = (1/2, 1/2): H = log 2
    assert soft_cross_entropy(teacher, student).item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_sample_past_is_a_seeded_subset_containing_the_teacher():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        chosen = sample_past(6, 3, g, include=4)
        assert len(chosen) == 3 and 4 in chosen and chosen == sorted(set(chosen)) and max(chosen) < 6
    assert sample_past(2, 5, g) == [0, 1]
    a = sample_past(10, 4, torch.Generator().manual_seed(3))
    assert a == sample_past(10, 4, torch.Generator().manual_seed(3))


def test_repeat_for_concepts_is_concept_major():
    x = torch.arange(2.0).view(2, 1)
    one = {"c": torch.full((1, 3), 7.0)}
    per_sample = {"c": torch.tensor([[1.0] * 3, [2.0] * 3])}
    xs, inputs = repeat_for_concepts(x, [one, per_sample])
    assert xs.view(-1).tolist() == [0, 1, 0, 1]
    assert inputs["c"][:, 0].tolist() == [7, 7, 1, 2]


def test_dc_fisher_of_a_toy_model_equals_its_analytic_value():
    """Toy denoiser F(x_t, c_j) = θ ⊙ c_j. With e_j = ‖ε − θ⊙c_j‖², logits −e_j/τ, ℓ = −log p(c_n | x):
    ∂e_j/∂θ = −2(ε − θ⊙c_j)⊙c_j and ∂ℓ/∂θ = (∂e_n/∂θ − Σ_j p_j ∂e_j/∂θ)/τ; F = mean over draws of (∂ℓ/∂θ)²."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, generator=g).requires_grad_(True)
    concepts = torch.randn(3, 4, generator=g)
    noises = [torch.randn(4, generator=g) for _ in range(5)]
    tau, true = 2.0, 2

    def loss_of(eps):
        return lambda: dc_cross_entropy(dc_logits((theta * concepts).unsqueeze(1), eps.unsqueeze(0), tau), true)

    fisher = diagonal_fisher([theta], (loss_of(eps) for eps in noises))[0]
    expected = torch.zeros(4)
    with torch.no_grad():
        for eps in noises:
            residual = eps - theta * concepts  # [3, 4]
            de = -2 * residual * concepts
            p = torch.softmax(-(residual**2).sum(-1) / tau, dim=0)
            grad = (de[true] - (p[:, None] * de).sum(0)) / tau
            expected += grad**2
    torch.testing.assert_close(fisher, expected / len(noises), rtol=1e-5, atol=1e-8)


def test_unit_sum_and_online_fold_by_hand():
    new = unit_sum([torch.tensor([1.0, 3.0]), torch.tensor([[4.0]])])
    torch.testing.assert_close(new[0], torch.tensor([0.125, 0.375]))
    torch.testing.assert_close(new[1], torch.tensor([[0.5]]))
    folded = fold([torch.tensor([1.0, 1.0])], [torch.tensor([0.5, 0.0])], 0.9)
    torch.testing.assert_close(folded[0], torch.tensor([1.4, 0.9]))
    assert fold(None, new, 0.9)[0] is not new[0]
    with pytest.raises(ValueError, match="decay"):
        fold(None, new, 1.5)


def test_ewc_penalty_by_hand_and_flat_form():
    params = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    anchors = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]
    fisher = [torch.tensor([2.0, 5.0]), torch.tensor([[0.5]])]
    # λ/2 · (2·1² + 5·0² + 0.5·2²) = λ/2 · 4
    assert ewc_penalty(params, anchors, fisher, 3.0).item() == pytest.approx(6.0)
    flat = FlatAnchor(anchors, fisher, "cpu").penalty(params, 3.0)
    assert flat.item() == pytest.approx(6.0)
    flat.backward()
    # gradient λ·F·(θ − θ*)
    torch.testing.assert_close(params[0].grad, torch.tensor([6.0, 0.0]))
    torch.testing.assert_close(params[1].grad, torch.tensor([[3.0]]))


def test_dsc_loss_by_hand():
    target = torch.zeros(1, 2)
    student = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1.0]]])  # errors 1, 0, 2
    t1 = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 0.0]]])  # errors 1, 2, 0
    t2 = student.clone()
    ps = torch.softmax(torch.tensor([-1.0, 0.0, -2.0]), 0)
    p1 = torch.softmax(torch.tensor([-1.0, -2.0, 0.0]), 0)
    h = lambda p, q: -(p * q.log()).sum().item()  # noqa: E731
    scores = h(p1, ps) + h(ps, ps)
    # noise: current = 2 (student [1,1] vs t1 [0,0] -> summed over the latent, as the DC errors are: 2), past = 1
    # (student == t2 -> 0)
    total = dsc_loss(student, t1, t2, target, current=2, past=1, temperature=1.0, score_weight=0.5, noise_weight=3.0)
    assert total.item() == pytest.approx(0.5 * scores + 3.0 * 2.0, rel=1e-6)
    only_noise = dsc_loss(student, t1, t2, target, current=2, past=1, temperature=1.0, score_weight=0.0, noise_weight=1.0)
    assert only_noise.item() == pytest.approx(2.0)


def test_dsc_noise_term_sums_over_the_latent_and_averages_over_the_batch():
    """Two samples of 4 elements: squared differences summing to 4 and 8 per sample: the term is (4 + 8)/2 = 6, the
    same reduction as a DC error (summed over the latent); the past teacher's term alike."""
    target = torch.zeros(2, 4)
    teacher = torch.zeros(3, 2, 4)
    student = torch.zeros(3, 2, 4)
    student[2, 0] = 1.0  # sample 0 of the current concept: 4 × 1² = 4
    student[2, 1, :2] = 2.0  # sample 1: 2 × 2² = 8
    student[1, 1, 0] = 3.0  # the past concept, sample 1: 9 (sample 0: 0) -> 4.5
    got = dsc_loss(student, teacher, teacher, target, current=2, past=1, temperature=1.0, score_weight=0.0, noise_weight=1.0)
    assert got.item() == pytest.approx(6.0 + 4.5)


# ---- the pool -----------------------------------------------------------------------------------

def _lora(seed, rank=2):
    g = torch.Generator().manual_seed(seed)
    return {
        "diffusion_model.a.lora_down.weight": torch.randn(rank, 5, generator=g),
        "diffusion_model.a.lora_up.weight": torch.randn(3, rank, generator=g),
        "diffusion_model.a.alpha": torch.tensor(float(rank)),
        "diffusion_model.b.lora_down.weight": torch.randn(rank, 4, 3, 3, generator=g),
        "diffusion_model.b.lora_up.weight": torch.randn(6, rank, 1, 1, generator=g),
        "diffusion_model.b.alpha": torch.tensor(float(rank)),
    }


def _fisher(lora, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) for k, v in lora.items() if not k.endswith(".alpha")}


def _pool(n=2, method="EWC-DC"):
    pool = ConceptPool("fp0", method, "a photo", 2.5)
    for i in range(n):
        lora = _lora(i)
        fisher = _fisher(lora, 10 + i) if method != "sequential LoRA" else {}
        pool = pool.with_concept(Concept(f"sks{i} dog", f"a photo of sks{i} dog", lora, fisher, {"images": 3, "seed": i}))
    return pool


def test_pool_round_trips_to_disk_bit_exactly(tmp_path):
    pool = _pool()
    first = pool.save(tmp_path / "a.safetensors")
    loaded = load_pool(first)
    assert (loaded.base_fingerprint, loaded.method, loaded.pretrained_prompt, loaded.temperature) == ("fp0", "EWC-DC", "a photo", 2.5)
    assert loaded.triggers == pool.triggers
    for a, b in zip(pool.concepts, loaded.concepts):
        assert (a.trigger, a.prompt, a.record) == (b.trigger, b.prompt, b.record)
        for part in ("lora", "fisher"):
            x, y = getattr(a, part), getattr(b, part)
            assert sorted(x) == sorted(y)
            for key in x:
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key])
    second = loaded.save(tmp_path / "b.safetensors")
    assert first.read_bytes() == second.read_bytes()
    sequential = _pool(method="sequential LoRA")
    assert load_pool(sequential.save(tmp_path / "s.safetensors")).concepts[1].fisher == {}


def test_pool_is_never_changed_by_growing():
    pool = _pool(1)
    grown = pool.with_concept(Concept("other", "a photo of other", _lora(5), _fisher(_lora(5), 1)))
    assert len(pool) == 1 and len(grown) == 2 and grown.extends(pool) and not pool.extends(grown)


@pytest.mark.parametrize("trigger", ["sks0 dog", "  SKS0   Dog ", ""])
def test_duplicate_or_empty_trigger_is_refused(trigger):
    with pytest.raises(ValueError, match="already holds|trigger is empty"):
        _pool(1).with_concept(Concept(trigger, "p", _lora(7), _fisher(_lora(7), 1)))


def test_pool_checks_base_lora_shape_and_fisher():
    pool = _pool(1)
    with pytest.raises(ValueError, match="another base model"):
        pool.check_base("fp1")
    with pytest.raises(ValueError, match="does not match the pool's LoRA"):
        pool.with_concept(Concept("new", "p", _lora(3, rank=3), _fisher(_lora(3, rank=3), 1)))
    with pytest.raises(ValueError, match="does not cover"):
        pool.with_concept(Concept("new", "p", _lora(3), {}))
    with pytest.raises(ValueError, match="method must be one of"):
        ConceptPool("fp", "EWC", "a photo")


def test_corrupt_or_foreign_pool_files_are_refused_and_left_alone(tmp_path):
    from driftless.lora.storage import save_safetensors_atomic

    good = _pool().save(tmp_path / "good.safetensors").read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "garbage": b"not a safetensors file at all",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_pool(path)
        assert path.read_bytes() == content
    lora_file = tmp_path / "lora.safetensors"
    save_safetensors_atomic(_lora(0), lora_file, {"format": "driftless.lora.v1"})
    with pytest.raises(ValueError, match="not a Driftless concept pool"):
        load_pool(lora_file)
    tensors, meta = _pool().to_file_contents()
    del tensors["concepts.1.fisher.diffusion_model.a.lora_up.weight"]
    save_safetensors_atomic(tensors, tmp_path / "missing.safetensors", meta)
    with pytest.raises(ValueError, match="damaged concept pool.*concept 2"):
        load_pool(tmp_path / "missing.safetensors")
    tensors, meta = _pool().to_file_contents()
    tensors["concepts.7.lora.x"] = torch.zeros(1)
    save_safetensors_atomic(tensors, tmp_path / "extra.safetensors", meta)
    with pytest.raises(ValueError, match="belong to no concept"):
        load_pool(tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match="no concept pool file"):
        load_pool(tmp_path / "absent.safetensors")
