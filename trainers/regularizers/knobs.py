"""Each method's settings, defined once: default, range and help, read by the node schema and the class alike.

A method module lists its settings as `KNOBS = {name: Knob(...)}` in the order its node shows them; the class
takes its keyword defaults from there (`Knob.default`) and checks its arguments with `check_knobs`, and the
node builds its inputs from the same entries (nodes/knobs.py). Benchmarks and tests that want the defaults
construct the class without those arguments.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    """One setting. The kind follows the default's type: bool (a switch), int, float, or str with `options`."""

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


def check_knobs(knobs: dict[str, Knob], method: str, **values) -> dict:
    """Every value checked against its setting (the error names the method); returns the converted values."""
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = knobs[name].check(name, value)
        except ValueError as e:
            raise ValueError(f"{method}: {e}") from None
    return checked


def defaults(knobs: dict[str, Knob]) -> dict:
    return {name: knob.default for name, knob in knobs.items()}
