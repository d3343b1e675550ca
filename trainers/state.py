"""Resume state: everything that decides the rest of a run, in one safetensors file beside its LoRA.

Saved: LoRA parameters, optimizer state, the data-order stream, the RNG state, the step, and the
fingerprints of the settings and of the base model. Loading checks both fingerprints, so a state is
never applied to another model or to settings that would take training elsewhere.
"""

import json
import pathlib

import torch

from ..lora.storage import load_safetensors, save_safetensors_atomic

STATE_SUFFIX = ".train-state"  # not a LoRA extension: LoRA lists do not show state files
FORMAT = "driftless.train-state.v1"


def save_state(path: pathlib.Path, *, adapter, optimizer, stream, generator, step, config, base_fingerprint, losses,
               regularizers=()):
    tensors = {f"lora.{k}": v for k, v in adapter.lora_state_dict().items()}
    for i, regularizer in enumerate(regularizers):
        tensors.update({f"reg.{i}.{k}": v for k, v in regularizer.state_dict().items()})
    optim = optimizer.state_dict()
    scalars, stored = {}, set()
    for idx, entry in optim["state"].items():
        for name, value in _flatten(entry):
            if isinstance(value, torch.Tensor):
                if value.data_ptr() in stored:  # one tensor in several places (bitsandbytes' quantization maps)
                    value = value.clone()
                stored.add(value.data_ptr())
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    for name, value in stream.state().items():
        tensors[f"data.{name}"] = value
    tensors["rng.cpu"] = generator.get_state()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    metadata = {
        "format": FORMAT,
        "step": step,
        "config_fingerprint": config.fingerprint(),
        "base_model_fingerprint": base_fingerprint,
        "config": config.as_dict(),
        "regularizers": [{"name": r.name, **r.settings()} for r in regularizers],
        "optimizer_param_groups": optim["param_groups"],
        "optimizer_scalars": scalars,
    }
    save_safetensors_atomic(tensors, path, metadata)


def _flatten(entry: dict, prefix: str = ""):
    """(dotted name, value) of a parameter's optimizer state; nested dicts (bitsandbytes keeps its quantization
    tensors in one) become dotted names, which `ResumeState.optimizer_state` nests again."""
    for name, value in entry.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _nest(state: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        state = state.setdefault(name, {})
    state[last] = value


class ResumeState:
    def __init__(self, path):
        self.path = pathlib.Path(path)
        tensors, raw = load_safetensors(self.path)
        meta = {k: json.loads(v) for k, v in raw.items()}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a Driftless training state (format {meta.get('format')!r})")
        self.tensors, self.meta = tensors, meta
        self.step = int(meta["step"])

    def check_compatible(self, config, base_fingerprint: str) -> None:
        if self.meta["base_model_fingerprint"] != base_fingerprint:
            raise ValueError(
                f"{self.path.name} was trained on another base model (fingerprint "
                f"{self.meta['base_model_fingerprint']}, this model is {base_fingerprint}); "
                "resume with the model it was trained on, or start a new run"
            )
        if self.meta["config_fingerprint"] != config.fingerprint():
            saved = self.meta["config"]
            changed = [k for k, v in config.as_dict().items() if k not in ("steps", "checkpoint_every") and saved.get(k) != v]
            raise ValueError(
                f"{self.path.name} was trained with other settings ({', '.join(f'{k}: {saved.get(k)!r} -> {config.as_dict()[k]!r}' for k in changed)}); "
                "resume with the same settings (only steps and checkpoint cadence may change)"
            )
        if self.step >= config.steps:
            raise ValueError(f"{self.path.name} is already at step {self.step}; set steps above that to train further")

    def check_regularizers(self, regularizers) -> None:
        saved = self.meta.get("regularizers", [])
        current = [{"name": r.name, **r.settings()} for r in regularizers]
        if saved != current:
            raise ValueError(
                f"{self.path.name} was trained with regularizers {saved}, this run has {current}; "
                "resume with the same regularizers and settings"
            )

    def lora_state(self) -> dict[str, torch.Tensor]:
        from ..lora.files import check_finite

        state = {k[len("lora."):]: v for k, v in self.tensors.items() if k.startswith("lora.")}
        check_finite(state, f"the LoRA of training state {self.path}")
        return state

    def optimizer_state(self) -> dict:
        """torch's optimizer state_dict; tensors are fresh copies (the optimizer updates them in place)."""
        state: dict[int, dict] = {}
        for key, value in self.tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                _nest(state.setdefault(int(idx), {}), name, value.clone())
        for key, value in self.meta["optimizer_scalars"].items():
            idx, name = key.split(".", 1)
            _nest(state.setdefault(int(idx), {}), name, value)
        return {"state": state, "param_groups": self.meta["optimizer_param_groups"]}

    def data_state(self) -> dict[str, torch.Tensor]:
        return {k[len("data."):]: v for k, v in self.tensors.items() if k.startswith("data.")}

    def regularizer_state(self, index: int) -> dict[str, torch.Tensor]:
        prefix = f"reg.{index}."
        return {k[len(prefix):]: v.clone() for k, v in self.tensors.items() if k.startswith(prefix)}

    def rng_state(self) -> torch.Tensor:
        return self.tensors["rng.cpu"]

    def losses(self) -> list[float]:
        return self.tensors["losses"].tolist()


def checkpoint_paths(run_folder: pathlib.Path, step: int) -> tuple[pathlib.Path, pathlib.Path]:
    """(LoRA file, state file) of the checkpoint at `step` in a run's folder."""
    stem = f"step_{step:06d}"
    return run_folder / f"{stem}.safetensors", run_folder / f"{stem}{STATE_SUFFIX}"


def latest_state(run_folder: pathlib.Path) -> pathlib.Path | None:
    states = sorted(run_folder.glob(f"step_*{STATE_SUFFIX}")) if run_folder.is_dir() else []
    return states[-1] if states else None
