"""The forgetting benchmark end to end on the shipped shapes model, two concepts of two training steps each."""

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/comfy/conftest.py


def _node_default(node, name):
    return next(i for i in node.define_schema().inputs if i.id == name).default


def test_the_benchmarks_knobs_are_the_nodes_defaults(comfy_host):
    from driftless.bench.forgetting import benchmark
    from driftless.nodes import continual as nodes

    d = benchmark.DEFAULTS
    assert d["score_temperature"] == _node_default(nodes.ConceptPool, "score_temperature")
    assert d["fisher_draws"] == _node_default(nodes.AddConcept, "fisher_draws")
    assert d["fisher_decay"] == _node_default(nodes.AddConcept, "fisher_decay")
    assert d["fisher_seed"] == _node_default(nodes.AddConcept, "seed")
    assert d["report_draws"] == _node_default(nodes.RetentionReport, "draws")
    assert d["report_seed"] == _node_default(nodes.RetentionReport, "seed")


def test_a_tiny_job_learns_two_concepts_and_records_each_stage(comfy_host):
    from driftless.bench.forgetting import benchmark, stats
    from driftless.shapes import weights

    knobs = {"steps": 2, "rank": 4, "learning_rate": 1e-2}
    jobs = benchmark.expand([("orange-cross", "cyan-square")], ["sequential LoRA", "EWC-DC + DSC"], [0], knobs)
    seq, dsc = (benchmark.run_job(job, weights.SHIPPED) for job in jobs)
    for r in (seq, dsc):
        assert r["pool_concepts"] == ["sks", "zwx"] and r["captions"][1] == "a zwx on a white background"
        assert [len(row) for row in r["fidelity"]] == [1, 2] and [len(row) for row in r["dc_accuracy"]] == [1, 2]
        assert all(0.0 <= a <= 1.0 for row in r["dc_accuracy"] for a in row)
        assert r["lora_change_between_stages"][0] > 1e-4  # the pool's stage-2 LoRA is not its stage-1 LoRA
        assert len(r["base_fidelity"]) == 2
        f = stats.job_figures(r)
        assert f["fidelity_forgetting"] == pytest.approx(r["fidelity"][0][0] - r["fidelity"][1][0])
        assert f["dc_accuracy_forgetting"] == pytest.approx(r["dc_accuracy"][0][0] - r["dc_accuracy"][1][0])
        assert r["prior_rmse_to_base"] > 0
    # stage 1 is the same training for every method (empty pool: no penalty, no consolidation)...
    assert seq["fidelity"][0] == pytest.approx(dsc["fidelity"][0], abs=1e-6)
    # ...stage 2 is not: DSC consolidates, and the pool's last LoRA differs
    assert seq["fidelity"][1] != pytest.approx(dsc["fidelity"][1], abs=1e-6)
    assert dsc["lora_change_between_stages"] != pytest.approx(seq["lora_change_between_stages"], abs=1e-7)
