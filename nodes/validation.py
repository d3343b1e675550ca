"""Input checks the host may skip: ComfyUI 0.3.x does not check V3 Combo values against their options."""

from comfy_api.latest import io


def combo_errors(schema: io.Schema, values: dict) -> list[str]:
    """One message per Combo input whose value is not one of its options."""
    errors = []
    for spec in schema.inputs:
        if isinstance(spec, io.Combo.Input) and spec.id in values:
            options = [o.value if hasattr(o, "value") else o for o in spec.options]
            if values[spec.id] not in options:
                errors.append(f"{spec.id}: {values[spec.id]!r} is not one of {options}")
    return errors


def validate_combos(node_cls, values: dict) -> bool | str:
    """For a node's `validate_inputs`: True, or the error text ComfyUI shows on the node."""
    errors = combo_errors(node_cls.define_schema(), values)
    return True if not errors else "; ".join(errors)


class CheckedNode(io.ComfyNode):
    """A node whose Combo inputs are checked against their options before it runs."""

    @classmethod
    def validate_inputs(cls, **values) -> bool | str:
        return validate_combos(cls, values)
