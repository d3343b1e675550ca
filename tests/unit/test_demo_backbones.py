"""The demo's metric backbones: written once, the same bytes on every machine, loadable, listed under their names."""

import hashlib

import pytest

from driftless.headless import demo_backbones
from driftless.metrics.backbones import find_models, load_backbone


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_written_once_deterministic_and_loadable(tmp_path):
    first = demo_backbones.write_demo_backbones(tmp_path / "a" / "models")
    second = demo_backbones.write_demo_backbones(tmp_path / "b" / "models")
    assert [p.relative_to(tmp_path / "a" / "models") for p in first] == [
        p.relative_to(tmp_path / "b" / "models") for p in second]
    for a, b in zip(first, second):
        assert _digests(a) == _digests(b) and "model.safetensors" in _digests(a)  # seeded: identical files

    stamps = {p: p.stat().st_mtime_ns for folder in first for p in folder.iterdir()}
    assert demo_backbones.write_demo_backbones(tmp_path / "a" / "models") == first
    assert {p: p.stat().st_mtime_ns for folder in first for p in folder.iterdir()} == stamps  # not rewritten

    root = tmp_path / "a" / "models" / "driftless_metrics"
    listed = find_models([root])
    assert {name: kind for name, (_, kind) in listed.items()} == {demo_backbones.CLIP: "clip", demo_backbones.DINO: "dino"}
    assert not [p for p in root.rglob(".*")]  # no scratch folder left behind
    clip, dino = load_backbone(first[0]), load_backbone(first[1])
    assert clip.has_text and type(dino.model).__name__ == "ViTModel"  # DINO v1, as the real examples name


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from driftless.tinymodels import metrics_backbones

    def broken(folder, seed=0, **_):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(metrics_backbones, "save_clip", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        demo_backbones.write_demo_backbones(tmp_path / "models")
    assert list((tmp_path / "models" / "driftless_metrics" / "driftless_demo").iterdir()) == []
