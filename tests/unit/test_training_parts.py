"""Schedules, settings, the data stream, safe files and the loss plot: small parts of the trainer."""

import math
import pathlib

import pytest
import torch

from driftless.trainers.config import TrainConfig
from driftless.trainers.data import IndexStream
from driftless.trainers.report import loss_plot, moving_average
from driftless.trainers.schedules import lr_factor
from driftless.lora.storage import load_safetensors, safe_path, save_safetensors_atomic


def test_schedules_by_hand():
    assert [lr_factor(s, 10, "constant", 3) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, "linear warm-up", 4) for s in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    # cosine after 2 warm-up steps over the remaining 8: step 2 -> 1, step 6 -> cos(pi/2) -> 0.5
    assert lr_factor(1, 10, "cosine", 2) == 1.0
    assert lr_factor(2, 10, "cosine", 2) == 1.0
    assert lr_factor(6, 10, "cosine", 2) == pytest.approx(0.5)
    assert lr_factor(9, 10, "cosine", 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_settings_problems_and_fingerprint():
    assert TrainConfig().problems() == []
    bad = TrainConfig(rank=0, steps=0, timestep_min=0.6, timestep_max=0.5, null_prompt_dropout=1.5, targets="x")
    text = "; ".join(bad.problems())
    for fragment in ("rank must be >= 1", "steps must be >= 1", "0 <= min < max <= 1", "probability in [0, 1]", "target layers"):
        assert fragment in text
    with pytest.raises(ValueError, match="invalid training settings"):
        bad.check()
    base = TrainConfig()
    assert base.fingerprint() == TrainConfig(steps=9999, checkpoint_every=7).fingerprint()
    assert base.fingerprint() != TrainConfig(learning_rate=2e-4).fingerprint()


def test_index_stream_covers_each_epoch_and_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    stream = IndexStream(5, g)
    first = stream.take(5).tolist()
    assert sorted(first) == [0, 1, 2, 3, 4]
    stream.take(2)
    saved, rng = stream.state(), g.get_state()
    expected = stream.take(7).tolist()
    g2 = torch.Generator()
    g2.set_state(rng)
    resumed = IndexStream(5, torch.Generator().manual_seed(99))
    resumed.generator = g2
    resumed.load_state(saved)
    assert resumed.take(7).tolist() == expected


def test_safe_paths(tmp_path):
    assert safe_path(tmp_path, "sub/name", ".safetensors") == (tmp_path / "sub" / "name.safetensors").resolve()
    assert safe_path(tmp_path, "x.safetensors", ".safetensors").name == "x.safetensors"
    for bad in ("../escape", "/etc/passwd", "a/../../b", "", "  "):
        with pytest.raises(ValueError):
            safe_path(tmp_path, bad, ".safetensors")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "lora.safetensors"
    save_safetensors_atomic({"a": torch.ones(2)}, path, {"k": {"x": 1}})
    tensors, meta = load_safetensors(path)
    assert torch.equal(tensors["a"], torch.ones(2)) and meta == {"k": '{"x": 1}'}

    import safetensors.torch

    def broken(*a, **k):
        pathlib.Path(a[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors_atomic({"a": torch.zeros(2)}, path)
    assert torch.equal(load_safetensors(path)[0]["a"], torch.ones(2))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]  # no temp file left


def test_only_safetensors_are_loaded(tmp_path):
    pickle_file = tmp_path / "evil.safetensors"
    torch.save({"a": torch.ones(1)}, pickle_file)  # a pickle wearing a safetensors name
    with pytest.raises(ValueError, match="only safetensors are loaded"):
        load_safetensors(pickle_file)


def test_loss_plot():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    img = loss_plot([3.0, 2.0, float("nan"), 1.5, 1.0])
    assert img.shape == (1, 360, 640, 3) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    blue = (img[0, :, :, 2] > 0.7) & (img[0, :, :, 0] < 0.3)
    assert blue.sum() > 50  # the moving-average line was drawn


def test_weight_decay_is_adamw_s_setting_and_enters_the_fingerprint_only_where_it_acts():
    from driftless.trainers.loop import make_optimizer

    assert TrainConfig().weight_decay == 0.01 and TrainConfig(weight_decay=0.0).problems() == []
    assert "weight decay must be in [0, 1]" in TrainConfig(weight_decay=-0.1).problems()[0]
    # states saved before weight decay was a setting trained AdamW at 0.01 and Adam without: same fingerprint
    assert TrainConfig(weight_decay=0.01).fingerprint() == "8bed5a3922fa7571"
    assert TrainConfig(weight_decay=0.0).fingerprint() != TrainConfig().fingerprint()
    adam = TrainConfig(optimizer="Adam").fingerprint()
    assert TrainConfig(optimizer="Adam", weight_decay=0.3).fingerprint() == adam  # Adam ignores it
    assert TrainConfig(optimizer="Adam", weight_decay=0.3).effective_weight_decay() == 0.0
    # with a zero gradient AdamW's step is the decay alone: p ← p·(1 − lr·wd); Adam's leaves p as it was
    for name, wd, factor in (("AdamW", 0.5, 1 - 0.1 * 0.5), ("AdamW", 0.0, 1.0), ("Adam", 0.0, 1.0)):
        p = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
        opt = make_optimizer(name, [p], lr=0.1, weight_decay=wd)
        p.grad = torch.zeros(2)
        opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor([2.0, -4.0]) * factor, rtol=0, atol=1e-7)


def test_an_initial_lora_enters_the_settings_fingerprint_only_when_set():
    from driftless.trainers.config import TrainConfig

    assert TrainConfig().fingerprint() == "8bed5a3922fa7571"  # as before the setting existed: old states resume
    assert TrainConfig(initial_lora="0123456789abcdef").fingerprint() != TrainConfig().fingerprint()
