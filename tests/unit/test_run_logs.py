"""The run's TensorBoard log: what each step writes, read back with TensorBoard's own reader; a restarted run's
steps show once; without the package the run goes on and says so."""

import logging
import types

import pytest
import torch

from driftless.trainers import logs
from driftless.trainers.logs import RunLog, step_scalars, term_keys


def _read(folder):
    """Scalars {tag: [(step, value)]} and images {tag: [(step, width, height)]} as TensorBoard loads the folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    images = {t: [(e.step, e.width, e.height) for e in acc.Images(t)] for t in tags["images"]}
    return scalars, images


class _Regularizer:
    def __init__(self, name, gamma=None):
        self.name, self.gamma = name, gamma

    def log_values(self):
        return {} if self.gamma is None else {"gamma": self.gamma}


def _fake_run(loss, lr, terms, regularizers):
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=lr)
    return types.SimpleNamespace(losses=[loss], step_terms={k: torch.tensor(v) for k, v in terms.items()},
                                 optimizer=optimizer, regularizers=regularizers, term_keys=term_keys(regularizers))


def test_term_keys_number_repeated_methods():
    regs = [_Regularizer("apt"), _Regularizer("parameter_anchor"), _Regularizer("apt")]
    assert term_keys(regs) == ["apt", "parameter_anchor", "apt_2"]


def test_step_scalars_by_hand():
    regs = [_Regularizer("apt", torch.tensor([0.0, 0.25, 0.5])), _Regularizer("dco")]
    run = _fake_run(0.75, 2e-4, {"denoising": 0.5, "apt": 0.125, "dco": 0.125}, regs)
    assert step_scalars(run) == {
        "loss/total": 0.75, "loss/denoising": 0.5, "loss/apt": 0.125, "loss/dco": 0.125, "optimizer/lr": 2e-4,
        "apt/gamma_0": 0.0, "apt/gamma_1": 0.25, "apt/gamma_2": 0.5,
    }


def test_written_steps_read_back_and_a_restart_shows_each_step_once(tmp_path):
    """Steps 1-5 logged, then a run resumed from step 3 logs 4-7 with other values: TensorBoard's reader shows
    steps 1-7 once each, 1-3 from the first file and 4-7 from the second; the image is there at its step."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    regs = [_Regularizer("apt", torch.tensor([0.0, 0.5]))]
    first = RunLog(tmp_path, first_step=1)
    for step in range(1, 6):
        first.write_step(step, _fake_run(1.0 / step, 1e-3, {"denoising": 1.0 / step, "apt": 0.0}, regs))
    first.image(5, torch.rand(1, 8, 12, 3))
    first.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    second = RunLog(tmp_path, first_step=4)
    for step in range(4, 8):
        second.write_step(step, _fake_run(10.0 + step, 5e-4, {"denoising": 10.0 + step, "apt": 0.0}, regs))
    second.close()

    scalars, images = _read(tmp_path)
    expected = [1.0, 0.5, 1 / 3, 14.0, 15.0, 16.0, 17.0]
    assert [s for s, _ in scalars["loss/total"]] == list(range(1, 8))
    assert [v for _, v in scalars["loss/total"]] == [torch.tensor(e, dtype=torch.float32).item() for e in expected]
    assert [v for _, v in scalars["optimizer/lr"]] == [torch.tensor(1e-3).item()] * 3 + [torch.tensor(5e-4).item()] * 4
    assert [v for _, v in scalars["apt/gamma_1"]] == [0.5] * 7
    assert images == {"validation": []}  # the image of step 5 belonged to the steps the restart dropped


def test_images_and_nothing_written_before_the_first_step(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    log = RunLog(tmp_path / "run", first_step=1)
    assert not (tmp_path / "run").exists()  # a run refused before its first step leaves no file
    log.write_step(1, _fake_run(0.5, 1e-3, {"denoising": 0.5}, []))
    log.image(1, torch.rand(1, 8, 12, 3))
    log.close()
    _, images = _read(tmp_path / "run")
    assert images == {"validation": [(1, 12, 8)]}


def test_without_tensorboard_the_run_is_not_logged_and_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logs, "available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert RunLog.open(tmp_path, 1) is None
    assert "tensorboard package is not installed (pip install tensorboard)" in caplog.text
    assert RunLog.open(tmp_path, 1, enabled=False) is None
    assert list(tmp_path.iterdir()) == []
