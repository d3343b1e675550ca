"""Every declared input bound holds before any work, on every node of the pack, through ComfyUI's own validation.

ComfyUI stops checking min/max for a node that defines `validate_inputs`, never checks linked values and lets NaN
through; nodes/validation.py puts the checks back. These tests walk every node's schema and try each bound: just
outside it (refused, the input and its range named), on it (accepted), NaN (refused), and the same values arriving
through a link (refused when the node starts, before it works).
"""

import asyncio
import math
import re

import pytest

# Nodes not yet on the CheckedNode base: their files are being changed elsewhere. ComfyUI checks their widget
# values itself (they define no validate_inputs), but not linked values. Shrinks to nothing when they move over.
NOT_YET_CHECKED: set[str] = set()  # every node checks its declared inputs


@pytest.fixture(scope="module")
def pack_nodes(comfy_host):
    from driftless.nodes import all_nodes

    return {cls.define_schema().node_id: cls for cls in all_nodes()}


def _widget_values(schema) -> dict:
    """Every widget input at its default (a Combo at its default or first option): a prompt as the UI would send it."""
    from comfy_api.latest import io

    values = {}
    for spec in schema.inputs:
        if isinstance(spec, io.Combo.Input):
            options = [o.value if hasattr(o, "value") else o for o in spec.options]
            if spec.default is not None or options:
                values[spec.id] = spec.default if spec.default is not None else options[0]
        elif isinstance(spec, (io.Int.Input, io.Float.Input, io.Boolean.Input, io.String.Input)):
            default = spec.default
            if default is None:
                default = {io.Int.Input: spec.min or 0, io.Float.Input: spec.min or 0.0, io.Boolean.Input: False,
                           io.String.Input: ""}[type(spec)]
            values[spec.id] = default
    return values


def _errors(node_id: str, values: dict) -> list[str]:
    """ComfyUI's validation of one node with these widget values (linked inputs absent): its error texts."""
    import execution

    prompt = {"1": {"class_type": node_id, "inputs": dict(values)}}
    valid, errors, _ = asyncio.run(execution.validate_inputs("bounds", prompt, "1", {}))
    return [] if valid else [f"{e['message']}: {e.get('details', '')}" for e in errors]


def _bounded(pack_nodes):
    from comfy_api.latest import io

    for node_id, cls in sorted(pack_nodes.items()):
        schema = cls.define_schema()
        for spec in schema.inputs:
            if isinstance(spec, (io.Int.Input, io.Float.Input)) and (spec.min is not None or spec.max is not None):
                yield node_id, cls, schema, spec


def _outside(spec) -> list:
    """Values just outside each declared bound."""
    from comfy_api.latest import io

    integer = isinstance(spec, io.Int.Input)
    values = []
    if spec.min is not None:
        values.append(spec.min - 1 if integer else spec.min - max(abs(spec.min) * 0.5, spec.step or 0.01, 1e-6))
    if spec.max is not None:
        values.append(spec.max + 1 if integer else spec.max + max(abs(spec.max) * 0.5, spec.step or 0.01, 1e-6))
    return values


def test_every_node_checks_its_declared_inputs(pack_nodes):
    from driftless.nodes.validation import CheckedNode

    unchecked = {node_id for node_id, cls in pack_nodes.items() if not issubclass(cls, CheckedNode)}
    assert unchecked == NOT_YET_CHECKED, "update NOT_YET_CHECKED: every node should be a CheckedNode"


def test_every_bound_of_every_node_is_enforced_with_its_range_named(pack_nodes):
    from driftless.nodes.validation import CheckedNode, range_text

    tried, failures = 0, []
    for node_id, cls, schema, spec in _bounded(pack_nodes):
        values = _widget_values(schema)
        for bad in _outside(spec):
            tried += 1
            errors = _errors(node_id, {**values, spec.id: bad})
            named = [e for e in errors if spec.id in e]
            # ours name the whole range; ComfyUI's own check (nodes not yet on CheckedNode) names the bound crossed
            want = range_text(spec) if issubclass(cls, CheckedNode) else "than m"
            if not any(want in e for e in named):
                failures.append(f"{node_id}.{spec.id} = {bad}: accepted or unexplained ({errors})")
        for edge in (spec.min, spec.max):
            if edge is not None and any(f"{spec.id} must be" in e or f"than {'min' if edge == spec.min else 'max'} of"
                                        in e for e in _errors(node_id, {**values, spec.id: edge})):
                failures.append(f"{node_id}.{spec.id} = {edge} (its own bound) refused")
        if issubclass(cls, CheckedNode) and not isinstance(spec.min if spec.min is not None else spec.max, int):
            if not any(f"{spec.id} must be a finite number" in e for e in _errors(node_id, {**values, spec.id: math.nan})):
                failures.append(f"{node_id}.{spec.id} = nan accepted")
    assert not failures, "\n".join(failures)
    assert tried >= 60, f"only {tried} bounds found: the walk missed the schemas"


def test_the_issue_cases_are_refused_before_work(pack_nodes):
    """batch_size 100000, steps 200000, learning rate 5.0, seed -1 (Train LoRA) and count 0 (Class Images)."""
    train = _widget_values(pack_nodes["DriftlessTrainLoRA"].define_schema())
    for name, value, expected in [("batch_size", 100000, "batch_size must be in [1, 64], got 100000"),
                                  ("steps", 200000, "steps must be in [1, 100000], got 200000"),
                                  ("learning_rate", 5.0, "learning_rate must be in [1e-07, 1], got 5"),
                                  ("seed", -1, "seed must be in [0, 9223372036854775807], got -1")]:
        assert any(expected in e for e in _errors("DriftlessTrainLoRA", {**train, name: value})), name
    images = _widget_values(pack_nodes["DriftlessClassImages"].define_schema())
    assert any("count must be in [1, " in e for e in _errors("DriftlessClassImages", {**images, "count": 0}))


def test_linked_values_are_checked_when_the_node_starts(pack_nodes):
    """A value from a link never reaches validate_inputs: the node refuses it before doing anything."""
    from driftless.nodes.validation import CheckedNode, range_text

    tried = 0
    for node_id, cls, schema, spec in _bounded(pack_nodes):
        if not issubclass(cls, CheckedNode):
            continue
        for bad in _outside(spec):
            tried += 1
            with pytest.raises(ValueError, match=re.escape(f"{spec.id} must be in {range_text(spec)}")):
                cls.execute(**{spec.id: bad})  # the other inputs are missing: the check comes before anything else
    assert tried >= 40


def test_combo_values_not_among_the_options_are_refused(pack_nodes):
    from comfy_api.latest import io

    from driftless.nodes.validation import CheckedNode

    tried = 0
    for node_id, cls in sorted(pack_nodes.items()):
        schema = cls.define_schema()
        for spec in schema.inputs:
            if isinstance(spec, io.Combo.Input) and issubclass(cls, CheckedNode) and spec.id not in cls.checks_itself:
                tried += 1
                errors = _errors(node_id, {**_widget_values(schema), spec.id: "no-such-option"})
                assert any(f"{spec.id}: 'no-such-option' is not one of" in e for e in errors), (node_id, spec.id, errors)
    assert tried >= 8


def test_a_subclass_wrapped_once_even_when_comfyui_clones_it(pack_nodes):
    """ComfyUI copies a node class per run (shallow_clone_class): the checks must not stack up."""
    from comfy_api.internal import shallow_clone_class

    cls = pack_nodes["DriftlessTrainLoRA"]
    clone = shallow_clone_class(cls)
    assert clone.__dict__["execute"].__func__ is cls.__dict__["execute"].__func__
    assert clone.__dict__["validate_inputs"].__func__ is cls.__dict__["validate_inputs"].__func__
