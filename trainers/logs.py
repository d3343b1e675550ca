"""A run's TensorBoard log: event files in its run folder (`tensorboard --logdir models/loras/<run_name>`).

After each optimizer step: `loss/total` (the step's loss, as the trainer reports it), `loss/denoising` and
`loss/<regularizer>` (each term, averaged over the step's micro-batches as the loss is), `optimizer/lr` (the
learning rate of that step, after the schedule), `optimizer/prodigy_d` (Prodigy's estimated step size), and what
each regularizer adds with `log_values` (`apt/gamma_<bin>`: APT's γ per timestep bin); the validation images
under `validation`. Steps count from 1 as the progress bar does.

A run that starts at step k+1 (k = 0 fresh, or the step of the state it resumes) marks its file with TensorBoard's
purge step k+1: readers drop whatever earlier files logged from that step on (the steps an interrupted run logged
after its last checkpoint, or an earlier run of the same name), so every step shows once, from the run that made
the checkpoint chain the LoRA came from.

The `tensorboard` package is optional (`pip install tensorboard`); without it the run trains as usual and says once
in the log that it writes no event files.
"""

import importlib.util
import logging
import pathlib

import torch

from .optimizers import log_values as optimizer_log_values

INSTALL = "pip install tensorboard"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def term_keys(regularizers) -> list[str]:
    """One tag per regularizer: its name, numbered from the second of a kind on (`apt`, `apt_2`)."""
    keys, seen = [], {}
    for regularizer in regularizers:
        seen[regularizer.name] = seen.get(regularizer.name, 0) + 1
        keys.append(regularizer.name if seen[regularizer.name] == 1 else f"{regularizer.name}_{seen[regularizer.name]}")
    return keys


def step_scalars(run) -> dict[str, float]:
    """Every scalar the log shows for the step a `TrainingRun` just took."""
    values = {"loss/total": run.losses[-1]}
    values.update({f"loss/{k}": float(v) for k, v in run.step_terms.items()})
    values["optimizer/lr"] = float(run.optimizer.param_groups[0]["lr"])
    values.update({f"optimizer/{k}": v for k, v in optimizer_log_values(run.optimizer).items()})
    for key, regularizer in zip(run.term_keys, run.regularizers):
        for name, value in regularizer.log_values().items():
            value = torch.as_tensor(value).detach().double().cpu()
            if value.ndim == 0:
                values[f"{key}/{name}"] = float(value)
            else:
                values.update({f"{key}/{name}_{i}": float(v) for i, v in enumerate(value.flatten().tolist())})
    return values


class RunLog:
    """TensorBoard event files of one run; `open` gives None (and says why, once) where it cannot write them.

    The file is created with the first step written, so a run refused before its first step leaves no mark."""

    def __init__(self, folder: pathlib.Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.folder, self.first_step, self._writer_class, self._writer = pathlib.Path(folder), first_step, SummaryWriter, None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = self._writer_class(str(self.folder), purge_step=self.first_step, flush_secs=10)
        return self._writer

    @classmethod
    def open(cls, folder: pathlib.Path, first_step: int, enabled: bool = True) -> "RunLog | None":
        if not enabled:
            return None
        if not available():
            logging.warning("Driftless: no TensorBoard log for this run: the tensorboard package is not installed (%s)",
                            INSTALL)
            return None
        try:
            return cls(folder, first_step)
        except ImportError as e:  # installed but broken (a protobuf it cannot use, ...): training goes on
            logging.warning("Driftless: no TensorBoard log for this run: tensorboard does not import (%s)", e)
            return None

    def write_step(self, step: int, run) -> None:
        for tag, value in step_scalars(run).items():
            self.writer.add_scalar(tag, value, step)

    def image(self, step: int, image: torch.Tensor, tag: str = "validation") -> None:
        """An IMAGE batch [B, H, W, 3] in [0, 1]: its first picture."""
        self.writer.add_image(tag, image[0].detach().float().clamp(0, 1).cpu(), step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
