"""Each method's settings, defined once: a frozen config dataclass whose fields carry default, range and help.

A method module defines `<Method>Config(MethodConfig)`, its fields made with `knob(...)` in the order the node
shows them, and a docstring that cites the paper and explains every field (peft's configs are the model):

    @dataclass(frozen=True)
    class DCOConfig(MethodConfig):
        method: ClassVar[str] = "DCO"
        beta: float = knob(1000.0, "β: ...", min=1.0, max=1e5, step=10.0)

Making a config checks and converts every value (a ValueError names the method, the setting and its range or
options). The class takes the config (`DCO(DCOConfig())`) or keyword overrides of it (`DCO(beta=250.0)`), so
`DCO()` is the node's default; the node builds its inputs from `knobs(DCOConfig)` (nodes/knobs.py).
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

KNOB = "driftless.knob"  # the field metadata key holding a field's Knob


@dataclass(frozen=True)
class Knob:
    """One setting as a user sees it. The kind follows the default's type: bool (a switch), int, float, or str with
    `options`; min/max/step are the widget's range (int and float), `help` its tooltip."""

    default: bool | int | float | str
    help: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: dict[str, str] | None = None  # str settings: option -> what it means

    def check(self, name: str, value):
        """`value` converted to this setting's type, or a ValueError naming the allowed range or options."""
        if self.options is not None:
            if value not in self.options:
                raise ValueError(f"{name} must be one of {list(self.options)}, got {value!r}")
            return value
        kind = type(self.default)
        if kind is bool:
            return bool(value)
        value = kind(value)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ValueError(f"{name} must be in [{self.min:g}, {self.max:g}], got {value:g}")
        return value


def knob(default, help: str, *, min: float | None = None, max: float | None = None, step: float | None = None,
         options: dict[str, str] | None = None):
    """A config field: its default, and the Knob (range, help) the node and the checks read."""
    return dataclasses.field(default=default, metadata={KNOB: Knob(default, help, min, max, step, options)})


@dataclass(frozen=True)
class MethodConfig:
    """Base of the methods' configs: every field is a `knob`, checked and converted when the config is made."""

    method: ClassVar[str] = "regularizer"  # how errors name the method

    def __post_init__(self):
        for name, setting in knobs(self).items():
            try:
                value = setting.check(name, getattr(self, name))
            except ValueError as e:
                raise ValueError(f"{self.method}: {e}") from None
            object.__setattr__(self, name, value)

    def as_dict(self) -> dict:
        """{setting: value} in field order (what a regularizer records in the LoRA file)."""
        return {name: getattr(self, name) for name in knobs(self)}


def knobs(config) -> dict[str, Knob]:
    """The settings of a config class or instance, in field order."""
    return {f.name: f.metadata[KNOB] for f in dataclasses.fields(config)}


def configured(config_class: type, config: MethodConfig | None, overrides: dict) -> MethodConfig:
    """`config` (default: the config class's defaults) with `overrides` replaced, checked: what a class's
    `__init__(self, config=None, **overrides)` keeps."""
    if config is not None and not isinstance(config, config_class):
        raise TypeError(f"expected a {config_class.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config or config_class(), **overrides)
