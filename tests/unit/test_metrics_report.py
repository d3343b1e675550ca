"""The report: JSON fields from known scores, the text table, the table image, atomic writing."""

import json

import pytest

from driftless.metrics.evaluate import MetricsResult, Scores
from driftless.metrics.report import build_report, table, table_image, write_json_atomic


def _result():
    result = MetricsResult(scores={
        "clip_t": Scores("CLIP-T", [0.30, -0.10, 0.20], "clip-vit-base-patch32"),
        "clip_i": Scores("CLIP-I", [0.80, 0.70, 0.90], "clip-vit-base-patch32"),
        "dino": Scores("DINO", [0.60, 0.50, 0.70], "facebook/dino-vits16"),
    }, prompts=["a sks dog"] * 3, clip_prompts=["a dog"] * 3, notes=["a note"])
    return result


def test_report_fields():
    report = build_report("personalization", _result(), {"generated": 3, "reference": 2}, {"class_noun": "dog"})
    clip_t = report["metrics"]["clip_t"]
    assert clip_t["mean"] == pytest.approx(0.4 / 3) and clip_t["std"] == pytest.approx(0.2081666, abs=1e-6)
    assert clip_t["per_image"] == [0.30, -0.10, 0.20] and clip_t["n"] == 3
    assert clip_t["torchmetrics_clip_score"] == pytest.approx((30 + 0 + 20) / 3)  # 100·max(cos, 0) per image
    assert "torchmetrics_clip_score" not in report["metrics"]["dino"]
    assert report["clip_t_prompts"] == ["a dog"] * 3 and report["notes"] == ["a note"]
    assert report["settings"] == {"class_noun": "dog"} and "per_pair" not in clip_t
    drift = build_report("drift", MetricsResult(scores={"dino": Scores("DINO", [1.0, 0.5], "d")}), {"pairs": 2})
    assert drift["metrics"]["dino"]["per_pair"] == [1.0, 0.5] and "same seed" in drift["metrics"]["dino"]["definition"]


def test_table_text_and_image():
    report = build_report("personalization", _result(), {"generated": 3, "reference": 2})
    lines = table(report).splitlines()
    assert lines[0] == "Personalization metrics" and lines[1].split() == ["metric", "mean", "std", "min", "max", "n", "backbone"]
    assert lines[2].split()[:3] == ["CLIP-T", "0.1333", "0.2082"] and lines[2].endswith("clip-vit-base-patch32")
    assert lines[2].index("0.1333") == lines[1].index("mean")  # aligned columns
    assert lines[-1] == "note: a note"
    image = table_image(report)
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[2] > 200
    assert 0.0 <= image.min().item() and image.max().item() == 1.0 and image.min().item() < 0.2  # text on white


def test_json_written_atomically(tmp_path):
    path = write_json_atomic({"a": [1, 2]}, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    with pytest.raises(TypeError):
        write_json_atomic({"bad": object()}, tmp_path / "sub" / "bad.json")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["r.json"]  # no half-written file, no temp left
