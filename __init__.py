"""Driftless: personalize diffusion models in ComfyUI without drifting from the base model.

ComfyUI calls `comfy_entrypoint()` (V3 node API). Importing this module imports nothing but the
standard library and touches no GPU; node modules are imported when ComfyUI asks for the node list.
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class DriftlessExtension(ComfyExtension):
        async def get_node_list(self):
            from .nodes import all_nodes

            return all_nodes()

    return DriftlessExtension()
