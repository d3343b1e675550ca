"""Node inputs built from a method's config (trainers/regularizers/knobs.py): default, range and tooltip."""

from comfy_api.latest import io

from ..trainers.regularizers.knobs import Knob, knobs


def knob_input(name: str, knob: Knob, **extra):
    """The widget for one setting: a Boolean, Int or Float input, or a Combo whose tooltip lists the options."""
    if knob.options is not None:
        meaning = " ".join(f"{option}: {text}." for option, text in knob.options.items())
        return io.Combo.Input(name, options=list(knob.options), default=knob.default, tooltip=f"{knob.help} {meaning}", **extra)
    if isinstance(knob.default, bool):
        return io.Boolean.Input(name, default=knob.default, tooltip=knob.help, **extra)
    if isinstance(knob.default, int):
        return io.Int.Input(name, default=knob.default, min=int(knob.min), max=int(knob.max), tooltip=knob.help, **extra)
    return io.Float.Input(name, default=knob.default, min=knob.min, max=knob.max, step=knob.step, round=False,
                          tooltip=knob.help, **extra)


def knob_inputs(config: type, *names: str) -> list:
    """Inputs for the settings `names` of a method's config class (all of them, in field order, when none are named)."""
    settings = knobs(config)
    return [knob_input(name, settings[name]) for name in (names or settings)]
