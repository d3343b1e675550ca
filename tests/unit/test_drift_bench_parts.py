"""The drift benchmark's generator, scores and classifier plumbing (pure torch/numpy, no ComfyUI)."""

import math

import numpy as np
import pytest
import torch

from driftless.shapes import classifier, dataset, metrics


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


def test_classifier_trains_on_the_round_trip_share_it_is_given():
    """The round trip sees a share of each batch (its pictures, not copies of others), and what it returns is what
    the classifier learns from: with every picture replaced by black, the trained net differs from one trained
    without the round trip; with share 0 it is never called."""
    seen = []

    def black(x):
        seen.append(x.shape[0])
        return torch.zeros_like(x)

    plain = classifier.train(4, 16, seed=0, log=lambda *a: None)
    classifier.train(4, 16, seed=0, log=lambda *a: None, roundtrip=black, roundtrip_share=0.0)
    assert seen == []
    every = classifier.train(4, 16, seed=0, log=lambda *a: None, roundtrip=black, roundtrip_share=1.0)
    assert seen == [16] * 4
    assert not torch.equal(plain.shape_head.weight, every.shape_head.weight)
    seen.clear()
    classifier.train(40, 16, seed=0, log=lambda *a: None, roundtrip=black, roundtrip_share=0.5)
    assert 0.35 < sum(seen) / (40 * 16) < 0.65  # about half of each batch, drawn per picture

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


@pytest.mark.parametrize("prompt, labels", [
    ("a red circle on a black background", ("circle", "red")),
    ("a sks on a white background", (None, None)),
    ("a blue sks on a black background", (None, "blue")),
    ("a green square on a red background", ("square", "green")),  # a background colour is not the shape's
    ("A Yellow Triangle, on gray", ("triangle", "yellow")),
])
def test_scorecard_reads_the_prompted_shape_and_colour(prompt, labels):
    from driftless.shapes import scorecard

    assert scorecard.prompt_labels(prompt) == labels


class _FixedNet:
    """A stand-in classifier: features are the mean RGB of a picture; its heads give the predictions listed per
    mean brightness of those features."""

    def __init__(self, shapes, colours):
        self.shapes, self.colours = shapes, colours

    def features(self, images):
        return images.mean(dim=(1, 2))

    @staticmethod
    def _pick(table, n, features):
        return torch.nn.functional.one_hot(torch.tensor([table[round(k, 4)] for k in features.mean(1).tolist()]), n).float()

    def shape_head(self, features):
        return self._pick(self.shapes, len(dataset.SHAPES), features)

    def colour_head(self, features):
        return self._pick(self.colours, len(dataset.COLOURS), features)


def test_scorecard_on_hand_made_pictures():
    """Pictures of flat colours, so each feature is that colour: fidelity, prompted-label rates, similarity and RMSE
    computed by hand."""
    from driftless.shapes import scorecard

    flat = lambda rgb: torch.tensor(rgb, dtype=torch.float32).expand(dataset.SIZE, dataset.SIZE, 3)  # noqa: E731
    subject = torch.stack([flat([1.0, 0.5, 0.0])] * 2)
    base = torch.stack([flat([1.0, 0.0, 0.0]), flat([0.0, 0.0, 1.0])])  # means 1/3 and 1/3: the same key
    personalized = torch.stack([flat([1.0, 0.5, 0.0]), flat([0.6, 0.0, 0.0])])  # means 0.5 and 0.2
    circle, square, red, blue = 0, 1, 0, 2
    net = _FixedNet(shapes={0.3333: square, 0.5: circle, 0.2: circle}, colours={0.3333: blue, 0.5: red, 0.2: red})
    scores = scorecard.scorecard(net, "a red circle on a black background", subject, base, personalized)
    cos_subject = lambda v: float(np.dot(v, [1, 0.5, 0]) / np.linalg.norm(v) / np.linalg.norm([1, 0.5, 0]))  # noqa: E731
    assert scores["subject fidelity"]["base"] == pytest.approx((cos_subject([1, 0, 0]) + cos_subject([0, 0, 1])) / 2)
    assert scores["subject fidelity"]["personalized"] == pytest.approx((1.0 + cos_subject([1, 0, 0])) / 2)
    assert scores["shape is circle"] == {"base": 0.0, "personalized": 1.0}
    assert scores["colour is red"] == {"base": 0.0, "personalized": 1.0}
    # pairs: (red, orange) cos = 1/sqrt(1.25); (blue, dark red) cos = 0
    assert scores["similarity to base"]["personalized"] == pytest.approx((1 / math.sqrt(1.25) + 0.0) / 2)
    rmse = math.sqrt((0.5**2 + 0.6**2 + 1.0**2) / 6)  # differences (0, .5, 0) and (.6, 0, 1): 3 channels x 2 pictures
    assert scores["pixel RMSE to base"] == {"base": 0.0, "personalized": pytest.approx(rmse)}
    rows = scorecard.rows(scores)
    assert rows[0] == ["score", "base", "personalized", "meaning"]
    assert ["shape is circle", "0.000", "1.000", scorecard.meaning("shape is circle")] in rows


def test_scorecard_refuses_unpaired_or_wrongly_sized_samples():
    from driftless.shapes import scorecard

    net = _FixedNet({}, {})
    pictures = torch.rand(2, dataset.SIZE, dataset.SIZE, 3)
    with pytest.raises(ValueError, match="must pair up"):
        scorecard.scorecard(net, "a red circle", pictures, pictures, pictures[:1])
    big = torch.rand(2, 64, 64, 3)
    with pytest.raises(ValueError, match="Empty Latent Image of 64x64"):
        scorecard.scorecard(net, "a red circle", pictures, big, big)
    with pytest.raises(ValueError, match="got subject pictures of 64x64"):
        scorecard.scorecard(net, "a red circle", big, pictures, pictures)


def test_matched_drift_interpolates_the_first_crossing():
    curve = [(0.75, 0.0), (0.80, 0.12), (0.86, 0.16), (0.85, 0.18), (0.90, 0.17)]
    assert metrics.matched_drift(curve, 0.775) == pytest.approx(0.06)  # halfway from the base model to step 1
    assert metrics.matched_drift(curve, 0.83) == pytest.approx(0.14)  # halfway along the second segment
    assert metrics.matched_drift(curve, 0.855) == pytest.approx(0.12 + 0.04 * 55 / 60)  # the first crossing wins
    assert metrics.matched_drift(curve, 0.95) is None and metrics.matched_drift(curve, 0.70) is None
    assert metrics.matched_drift([(0.8, 0.1), (0.8, 0.2)], 0.8) == 0.1


def test_bootstrap_mean_on_hand_computable_cases():
    """Constant values: every resample has the same mean. Two values 0 and 1: a resample's mean is 0, 1/2 or 1 with
    probabilities 1/4, 1/2, 1/4, so the 2.5th percentile is 0 and the 97.5th is 1 (and the share of 1/2 is ~1/2)."""
    from driftless.bench.drift import grid

    assert grid.bootstrap_mean([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))
    mean, low, high = grid.bootstrap_mean([0.0, 1.0], resamples=4000, seed=1)
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    assert grid.bootstrap_mean([0.0, 1.0], seed=1) == grid.bootstrap_mean([0.0, 1.0], seed=1)  # seeded
    # ten units, nine at 0 and one at 1: P(resample mean = 0) = 0.9^10 = 0.349 > 2.5%, so the low end is 0
    _, low, high = grid.bootstrap_mean([0.0] * 9 + [1.0])
    assert low == 0.0 and 0.2 <= high <= 0.4  # P(mean >= 0.3) = 0.070, P(mean >= 0.4) = 0.013
    with pytest.raises(ValueError, match="at least one"):
        grid.bootstrap_mean([])


def test_matched_ratio_interpolates_plain_loras_curve_by_hand():
    from driftless.bench.drift import grid

    plain = [(0.40, 0.0), (0.50, 0.10), (0.60, 0.30)]  # base model, then two checkpoints
    # fidelity 0.55 is halfway along the second segment: plain drift 0.20; the method's 0.10 is half of it
    assert grid.matched_ratio((0.55, 0.10), plain) == pytest.approx(0.5)
    assert grid.matched_ratio((0.45, 0.10), plain) == pytest.approx(2.0)  # plain 0.05 there
    assert grid.matched_ratio((0.70, 0.10), plain) is None  # beyond plain LoRA's reach
    assert grid.matched_ratio((0.41, 0.10), plain) is None  # plain 0.01: still at the base model


def test_verdict_reads_the_interval():
    from driftless.bench.drift import grid

    assert grid.verdict(0.6, 0.9, better_below=1.0) == "holds"
    assert grid.verdict(1.1, 1.4, better_below=1.0) == "does not hold"
    assert grid.verdict(0.8, 1.2, better_below=1.0) == "inconclusive"
    assert grid.verdict(0.01, 0.2, better_above=0.0) == "holds"
    assert grid.verdict(-0.2, -0.01, better_above=0.0) == "does not hold"
    assert grid.verdict(-0.1, 0.1, better_above=0.0) == "inconclusive"


def test_jobs_are_records_with_content_keys():
    from driftless.bench.drift import grid

    knobs = {"steps": 40, "checkpoints": (20, 40), "rank": 8, "learning_rate": 1e-3}
    jobs = grid.expand(["orange-cross", "cyan-square"], ["plain LoRA", "APT"], [0, 1, 2], knobs)
    assert len(jobs) == 12 and len({j.key for j in jobs}) == 12
    again = grid.expand(["orange-cross"], ["plain LoRA"], [0], dict(reversed(list(knobs.items()))))[0]
    assert again.key == jobs[0].key and again.record() == jobs[0].record()  # the knobs' order does not matter
    assert jobs[0].record() == {"subject": "orange-cross", "method": "plain LoRA", "seed": 0,
                                "knobs": {**knobs, "guidance": True}}
    assert not next(j for j in jobs if j.method == "APT").knob["guidance"]
    with pytest.raises(ValueError, match="unknown subject 'dog'"):
        grid.expand(["dog"], ["plain LoRA"], [0], knobs)


def test_default_subjects_differ_in_shape_colour_and_pattern():
    from driftless.bench.drift import grid

    subjects = list(grid.SUBJECTS.values())
    assert len(subjects) >= 6
    assert len({s.shape for s in subjects}) >= 3 and len({s.colour for s in subjects}) >= 3
    assert {s.pattern for s in subjects} == set(grid.PATTERNS)
    for s in subjects:
        assert s.colour not in dataset.COLOURS.values()  # no subject is a pretraining colour
    pictures = grid.SUBJECTS["purple-cross-stripes"].render(2, seed=7)
    assert pictures.shape == (2, 32, 32, 3) and torch.equal(pictures, grid.SUBJECTS["purple-cross-stripes"].render(2, seed=7))
    colour = torch.tensor(grid.SUBJECTS["purple-cross-stripes"].colour)
    on = ((pictures - colour).abs().sum(-1) < 1e-6)
    dark = ((pictures - 0.35 * colour).abs().sum(-1) < 1e-6)
    assert on.any() and dark.any()  # both stripes are drawn
    rows_on, rows_dark = on.any(-1), dark.any(-1)
    assert not (rows_on & rows_dark).any()  # horizontal stripes: a row is one or the other


def _result(subject, method, seed, curve, final, base_fidelity=0.4):
    return {"job": {"subject": subject, "method": method, "seed": seed}, "base": {"subject_fidelity": base_fidelity},
            "curve": [{"subject_fidelity": f, "prior_rmse_to_base": d} for f, d in curve], "final": final}


def test_summary_and_claims_from_hand_made_results():
    from driftless.bench.drift import grid

    s = lambda f, t, p, d: {"subject_fidelity": f, "text_alignment": t, "prior_accuracy": p,  # noqa: E731
                            "prior_similarity_to_base": 1 - d, "prior_rmse_to_base": d}
    results = []
    for subject in ("orange-cross", "cyan-square"):
        for seed in (0, 1):
            results.append(_result(subject, "plain LoRA", seed, [(0.5, 0.1), (0.6, 0.3)],
                                   {"CFG": s(0.6, 0.8, 0.7, 0.3), "personalization guidance": s(0.7, 0.6, 0.6, 0.4),
                                    "autoguidance": s(0.65, 0.7, 0.6, 0.4)}))
            results[-1]["base"] = s(0.4, 1.0, 0.8, 0.0)
            # the anchor at fidelity 0.55 with drift 0.1: plain LoRA had 0.2 there -> ratio 0.5 in every unit
            results.append(_result(subject, "parameter anchor", seed, [(0.55, 0.1)], {"CFG": s(0.55, 0.8, 0.7, 0.1)}))
            results[-1]["base"] = s(0.4, 1.0, 0.8, 0.0)
    summary = grid.summarise(results, resamples=200)
    assert summary["matched"]["parameter anchor"]["ratio"] == pytest.approx((0.5, 0.5, 0.5))
    assert summary["final"]["plain LoRA | CFG"]["subject_fidelity"] == pytest.approx((0.6, 0.6, 0.6))
    d = summary["deltas"]["plain LoRA: personalization guidance − CFG: text_alignment"]["delta"]
    assert d == pytest.approx((-0.2, -0.2, -0.2))
    rows = {r["claim"]: r for r in grid.claims(summary)}
    assert rows["P&P: less drift than DreamBooth-LoRA at matched fidelity"]["verdict"] == "holds"
    assert rows["personalization guidance: better text alignment than CFG"]["verdict"] == "does not hold"
    assert rows["personalization guidance: better subject fidelity than autoguidance"]["verdict"] == "holds"
    assert not any(claim.startswith("DC-score") for claim in rows)  # the forgetting benchmark's rows (claims.render)
    text = grid.claims_markdown(grid.claims(summary), "from a test")
    assert "| 0.50× (0.50–0.50) | holds |" in text


def test_claims_page_block_is_rewritten_from_the_json(tmp_path):
    import json

    from driftless.bench.drift import claims

    report = {"summary": {"stale": "the table is made from the jobs, not from this"}, "mode": "quick",
              "command": "./driftless bench drift --mode quick", "date": "2026-12-05 13:50 UTC",
              "jobs": _explained_results(), "wall_s": 300.0, "cpu_s": 500.0}
    js = tmp_path / "drift_quick.json"
    js.write_text(json.dumps(report))
    page = tmp_path / "claims.md"
    page.write_text(f"intro\n{claims.BEGIN}\nold table\n{claims.END}\noutro\n")
    claims.update(js, page)
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{claims.END}\noutro\n") and "old table" not in text
    assert "`./driftless bench drift --mode quick` (quick mode)" in text and "8 jobs" in text
    assert "| 1.50× (1.50–1.50) | does not hold |" in text
    page.write_text("no markers")
    with pytest.raises(SystemExit, match="lacks the markers"):
        claims.update(js, page)


def test_prompts_from_the_command_line():
    from driftless.bench.drift import benchmark

    assert benchmark.parse_prior("red circle on black") == ("circle", "red", "black")
    assert benchmark.parse_prior("a green triangle on a gray background") == ("triangle", "green", "gray")
    assert benchmark.parse_align("blue on white") == ("blue", "white")
    with pytest.raises(SystemExit, match="'<colour> <shape> on <background>'"):
        benchmark.parse_prior("orange circle on black")
    with pytest.raises(SystemExit, match="'<colour> on <background>'"):
        benchmark.parse_align("blue")
    sets = benchmark.prompt_sets(prior=[("square", "red", "white")], align=[("blue", "black")])
    assert [(kind, prompt) for kind, prompt, _, _ in sets] == [
        ("prior", "a red square on a white background"), ("subject", "a sks on a white background"),
        ("align", "a blue sks on a black background")]
def test_prior_breakdown_counts_shape_colour_and_both_per_prompt():
    """Hand-counted: prompt a has 4 samples (shape right 3, colour right 2, both 1), prompt b 2 samples (all right)."""
    prompts = ["a", "a", "a", "a", "b", "b"]
    shape_true, colour_true = torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([2, 2, 2, 2, 3, 3])
    shape_pred, colour_pred = torch.tensor([0, 0, 0, 2, 1, 1]), torch.tensor([2, 1, 1, 2, 3, 3])
    out = metrics.prior_breakdown(prompts, shape_pred, colour_pred, shape_true, colour_true)
    a, b, overall = out["per_prompt"]["a"], out["per_prompt"]["b"], out["overall"]
    assert list(out["per_prompt"]) == ["a", "b"] and (a["n"], b["n"], overall["n"]) == (4, 2, 6)
    assert (a["shape"]["share"], a["colour"]["share"], a["both"]["share"]) == (0.75, 0.5, 0.25)
    assert b["both"] == {"share": 1.0, "low": 1.0, "high": 1.0}  # all alike: no spread to resample
    assert overall["both"]["share"] == pytest.approx(3 / 6)
    for r in (a, overall):
        for k in ("shape", "colour", "both"):
            assert 0.0 <= r[k]["low"] <= r[k]["share"] <= r[k]["high"] <= 1.0
    with pytest.raises(ValueError, match="5 prompts for 6"):
        metrics.prior_breakdown(prompts[:5], shape_pred, colour_pred, shape_true, colour_true)


def test_bootstrap_interval_is_seeded_and_brackets_a_binomial_share():
    """40 hits in 100: the 95% interval is about 0.40 ± 1.96·sqrt(0.4·0.6/100) = 0.30–0.50; reruns agree."""
    hits = torch.tensor([1] * 40 + [0] * 60)
    low, high = metrics.bootstrap_interval(hits)
    assert (low, high) == metrics.bootstrap_interval(hits)
    assert low == pytest.approx(0.304, abs=0.03) and high == pytest.approx(0.496, abs=0.03)


def _explained_results():
    """Hand-made results: plain LoRA's CFG curve (fidelity, text alignment, similarity) runs (0.4, 1.0, 1.0) ->
    (0.5, 0.9, 0.9) -> (0.6, 0.8, 0.7); the anchor ends at fidelity 0.55, similarity 0.95, pixel drift 0.3."""
    s = lambda f, t, sim, d: {"subject_fidelity": f, "text_alignment": t, "prior_accuracy": 1.0,  # noqa: E731
                              "prior_similarity_to_base": sim, "prior_rmse_to_base": d}
    results = []
    for subject in ("orange-cross", "cyan-square"):
        for seed in (0, 1):
            plain = {"job": {"subject": subject, "method": "plain LoRA", "seed": seed}, "base": s(0.4, 1.0, 1.0, 0.0),
                     "curve": [s(0.5, 0.9, 0.9, 0.1), s(0.6, 0.8, 0.7, 0.3)],
                     "final": {"CFG": s(0.6, 0.8, 0.7, 0.3), "personalization guidance": s(0.55, 0.6, 0.6, 0.4),
                               "personalization guidance, s = 0": s(0.7, 0.9, 0.6, 0.4), "autoguidance": s(0.5, 0.7, 0.6, 0.4)}}
            anchor = {"job": {"subject": subject, "method": "parameter anchor", "seed": seed}, "base": s(0.4, 1.0, 1.0, 0.0),
                      "curve": [s(0.55, 0.8, 0.95, 0.3)], "final": {"CFG": s(0.55, 0.8, 0.95, 0.3)}}
            results += [plain, anchor]
    return results


def test_claims_explanations_from_hand_made_results():
    """Drift read from features and text alignment at matched fidelity, against values worked out by hand, and shown
    beside a claim that does not hold."""
    from driftless.bench.drift import grid

    results = _explained_results()
    summary = grid.summarise(results, resamples=200)
    assert summary["matched_features"]["parameter anchor"]["ratio"] == pytest.approx((0.25, 0.25, 0.25))
    # guided: fidelity 0.55, text alignment 0.6; CFG's curve had 0.85 there -> −0.25
    assert summary["matched_text"]["personalization guidance"]["delta"] == pytest.approx((-0.25, -0.25, -0.25))
    assert summary["matched_text"]["personalization guidance, s = 0"]["unmatched"] == 4  # 0.7: never reached by CFG
    assert summary["matched"]["parameter anchor"]["ratio"] == pytest.approx((1.5, 1.5, 1.5))  # pixels: 0.3 / 0.2
    rows = {r["claim"]: r for r in grid.claims(summary)}
    anchor_row = rows["P&P: less drift than DreamBooth-LoRA at matched fidelity"]
    assert anchor_row["verdict"] == "does not hold"
    assert [e["verdict"] for e in anchor_row["explanations"]] == ["not measured", "holds"]
    text_row = rows["personalization guidance: better text alignment than CFG"]
    assert text_row["effect"] == pytest.approx((-0.2, -0.2, -0.2))
    assert [e["effect"][0] for e in text_row["explanations"]] == pytest.approx([0.1, -0.25])  # s = 0: 0.9 − 0.8
    table = grid.claims_markdown(grid.claims(summary), "from a test")
    line = next(x for x in table.splitlines() if x.startswith("| P&P"))
    assert "1.50× (1.50–1.50) | does not hold |" in line and "0.25× (0.25–0.25), holds" in line
    holds = next(x for x in table.splitlines() if x.startswith("| personalization guidance: better subject fidelity than autoguidance"))
    assert holds.endswith("| holds | – |")  # explanations are listed only where the claim fails or is inconclusive


def test_gain_share_is_a_ratio_of_sums_resampled_in_pairs():
    from driftless.bench.drift import grid

    ratio, low, high = grid.ratio_of_means([0.2, 0.2], [0.1, 0.3], resamples=500)
    assert ratio == pytest.approx(1.0)  # 0.4 / 0.4: the sums, not the mean of the per-unit ratios (2 and 2/3: 1.33)
    assert low == pytest.approx(2 / 3) and high == pytest.approx(2.0)  # resampled pairs: 0.4/0.6, 0.4/0.4, 0.4/0.2
    assert grid.ratio_of_means([0.3], [0.2]) == pytest.approx((1.5, 1.5, 1.5))
    summary = grid.summarise(_explained_results(), resamples=200)
    # the anchor gains 0.55 − 0.4 where plain LoRA gains 0.6 − 0.4, on every unit
    assert summary["gain_share"]["parameter anchor"]["share"] == pytest.approx((0.75, 0.75, 0.75))
    assert summary["deltas"]["parameter anchor − plain LoRA: prior_rmse_to_base"]["delta"] == pytest.approx((0.0, 0.0, 0.0))


def test_method_names_change_knobs_checked_against_the_config():
    from driftless.bench.drift import benchmark
    from driftless.trainers.regularizers.apt import APT

    assert benchmark.parse_method("plain LoRA") == ("plain LoRA", {})
    assert benchmark.parse_method("APT, adaptive adjustment on, temperature 1, attention maps per head") == (
        "APT", {"adaptive_adjustment": True, "temperature": 1.0, "attention_maps": "per head"})
    assert benchmark.parse_method("parameter anchor, weight 0.1") == ("parameter anchor", {"weight": 0.1})
    (apt,) = benchmark.make_regularizers("APT, bins 4, representation weight 0", None, None)
    assert isinstance(apt, APT) and apt.config.bins == 4 and apt.lambda_dist == 0.0
    for bad, says in (("APT, wat 3", "not 'knob value' with a knob of APT"), ("APT, temperature abc", "takes a number"),
                      ("APT, adaptive adjustment maybe", "on or off"), ("APT, p max 1.5", "p_max must be in"),
                      ("plain LoRA, weight 1", "takes no knobs"), ("LoHa", "unknown method")):
        with pytest.raises(SystemExit, match=says):
            benchmark.parse_method(bad)


def test_benchmark_counts_are_whole_numbers_of_at_least_one():
    import argparse

    from driftless.bench.common import positive_int

    assert positive_int("3") == 3
    for bad, says in (("0", "below 1"), ("-2", "below 1"), ("1.5", "not a whole number"), ("x", "not a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            positive_int(bad)
