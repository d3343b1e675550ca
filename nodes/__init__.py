"""The pack's ComfyUI nodes (V3 schema). Each module declares and wires; the work lives elsewhere."""


def all_nodes() -> list:
    """Every node class of the pack, in menu order. Imported lazily by the extension."""
    from .tiny_model import TinyModel

    return [TinyModel]
