"""Every declared input bound and option, enforced before a node works: the checks ComfyUI skips for our nodes.

ComfyUI checks an input's min/max itself only for a node that defines no `validate_inputs`: once a node defines
one taking `**kwargs` (ours do, to check more), it checks no bound at all; values that arrive through a link are
never checked; a NaN passes every comparison; and ComfyUI 0.3.x checks no V3 Combo value against its options.

`CheckedNode`, the base of the pack's nodes, puts them back in one place: whatever `validate_inputs` and
`execute` a subclass defines run behind `declared_errors` (every Int/Float input in its declared range and
finite, every Combo value one of its options), so a widget value is refused when the prompt is validated and a
linked value when the node starts, each with the input and its range named.
"""

import functools
import inspect
import math

from comfy_api.latest import io

_CHECKED = "__driftless_checked__"  # marks a wrapped function (ComfyUI clones node classes per run: wrap once)


def _number(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def range_text(spec) -> str:
    """An Int/Float input's declared range as users read it: `[1, 64]`, `>= 0` or `<= 1`."""
    if spec.min is not None and spec.max is not None:
        return f"[{_number(spec.min)}, {_number(spec.max)}]"
    return f">= {_number(spec.min)}" if spec.min is not None else f"<= {_number(spec.max)}"


def bound_error(spec, value) -> str | None:
    """Why `value` is out of the declared range of the Int/Float input `spec`, or None when it is in it."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # absent, or not a number: ComfyUI's type checks and the node's own checks answer for it
    low, high = spec.min, spec.max
    bounded = low is not None or high is not None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{spec.id} must be a finite number{' in ' + range_text(spec) if bounded else ''}, got {value}"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{spec.id} must be in {range_text(spec)}, got {_number(value)}"
    return None


def declared_errors(schema: io.Schema, values: dict, skip=()) -> list[str]:
    """One message per input of `values` outside what `schema` declares: an Int/Float out of its range (or not
    finite), a Combo value not among its options. Inputs not in `values` (linked, not connected) and those named in
    `skip` are not checked."""
    errors = []
    for spec in schema.inputs:
        if spec.id not in values or spec.id in skip:
            continue
        value = values[spec.id]
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            error = bound_error(spec, value)
            if error:
                errors.append(error)
        elif isinstance(spec, io.Combo.Input):
            options = [o.value if hasattr(o, "value") else o for o in spec.options]
            if value not in options:
                errors.append(f"{spec.id}: {value!r} is not one of {options}")
    return errors


def combo_errors(schema: io.Schema, values: dict) -> list[str]:
    """One message per Combo input whose value is not one of its options."""
    combos = {spec.id for spec in schema.inputs if isinstance(spec, io.Combo.Input)}
    return declared_errors(schema, {k: v for k, v in values.items() if k in combos})


def validate_combos(node_cls, values: dict) -> bool | str:
    """For a node's `validate_inputs`: True, or the error text ComfyUI shows on the node."""
    errors = combo_errors(node_cls.define_schema(), values)
    return True if not errors else "; ".join(errors)


def _accepted(func, values: dict) -> dict:
    """The part of `values` that `func` (a classmethod's function) takes by name."""
    spec = inspect.getfullargspec(func)
    if spec.varkw is not None:
        return values
    return {k: v for k, v in values.items() if k in spec.args[1:] or k in spec.kwonlyargs}


def _checked_validate(func):
    @functools.wraps(func)
    def validate_inputs(cls, **values) -> bool | str:
        errors = declared_errors(cls.define_schema(), values, cls.checks_itself)
        if errors:
            return "; ".join(errors)
        return func(cls, **_accepted(func, values))

    setattr(validate_inputs, _CHECKED, True)
    return validate_inputs


def _checked_execute(func):
    signature = inspect.signature(func)
    cls_name = next(iter(signature.parameters))
    var_keyword = next((n for n, p in signature.parameters.items() if p.kind is p.VAR_KEYWORD), None)

    def check(cls, args, kwargs):
        given = dict(signature.bind_partial(cls, *args, **kwargs).arguments)
        given.pop(cls_name, None)
        if var_keyword:
            given.update(given.pop(var_keyword, {}))
        errors = declared_errors(cls.define_schema(), given, cls.checks_itself)
        if errors:
            raise ValueError(f"{cls.define_schema().display_name or cls.__name__}: " + "; ".join(errors))

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def execute(cls, *args, **kwargs):
            check(cls, args, kwargs)
            return await func(cls, *args, **kwargs)
    else:
        @functools.wraps(func)
        def execute(cls, *args, **kwargs):
            check(cls, args, kwargs)
            return func(cls, *args, **kwargs)

    setattr(execute, _CHECKED, True)
    return execute


class CheckedNode(io.ComfyNode):
    """A node whose declared input ranges and Combo options are enforced before it works (see the module doc).

    Subclasses define `validate_inputs` and `execute` as usual; both are wrapped when the class is made. A Combo
    input whose value the node checks itself, with a better message (a file to put somewhere), is named in
    `checks_itself`."""

    checks_itself: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, wrap in (("validate_inputs", _checked_validate), ("execute", _checked_execute)):
            member = cls.__dict__.get(name)
            if isinstance(member, classmethod) and not getattr(member.__func__, _CHECKED, False):
                setattr(cls, name, classmethod(wrap(member.__func__)))

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        errors = declared_errors(cls.define_schema(), values, cls.checks_itself)
        return True if not errors else "; ".join(errors)
