"""Loading the pretrained drift-bench model the way a user's graph does: through the pack's model node."""

import pathlib


def load_pretrained(folder: pathlib.Path):
    """(MODEL, CLIP, VAE) from a built cache folder, through the node's own execute()."""
    from ...nodes.pretrained_model import PretrainedShapesModel

    return PretrainedShapesModel.load(folder)
