"""The model to personalize, from a local checkpoint file, loaded the way Load Checkpoint loads it."""

import pathlib

from .dataset import DreamBenchError

SUFFIXES = (".safetensors", ".sft")


def check_checkpoint(path) -> pathlib.Path:
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        where = f"folder {path.parent} exists but has no {path.name}" if path.parent.is_dir() else f"folder {path.parent} does not exist"
        raise DreamBenchError(f"checkpoint {path} not found ({where}). Give a local checkpoint file, e.g. "
                              "v1-5-pruned-emaonly.safetensors (SD1.5) or sd_xl_base_1.0.safetensors (SDXL); "
                              "nothing is downloaded.")
    if path.suffix.lower() not in SUFFIXES:
        raise DreamBenchError(f"checkpoint {path}: only .safetensors files are loaded (never pickled .ckpt/.pt files); "
                              "convert it to safetensors first")
    return path


def load_checkpoint(path):
    """(MODEL, CLIP, VAE) from a single-file checkpoint (UNet, text encoder(s) and VAE).

    A regular checkpoint goes through ComfyUI's own loader, `comfy.sd.load_checkpoint_guess_config`, which
    is what CheckpointLoaderSimple calls. A file written by tinymodels.checkpoint (its metadata names a tiny
    architecture, which ComfyUI's model detection does not know) is built from that config instead.
    """
    from ...tinymodels.checkpoint import load_tiny_checkpoint, tiny_architecture

    path = check_checkpoint(path)
    if tiny_architecture(path) is not None:
        return load_tiny_checkpoint(path)
    import comfy.sd
    import folder_paths
    import torch
    from safetensors import SafetensorError

    try:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), output_vae=True, output_clip=True, embedding_directory=folder_paths.get_folder_paths("embeddings"))
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DreamBenchError(f"checkpoint {path}: ComfyUI could not load it ({first}). It must be a full checkpoint "
                              "(UNet, text encoder and VAE in one file) of an architecture ComfyUI knows") from None
    if model is None or clip is None:
        raise DreamBenchError(f"checkpoint {path} holds no text encoder (a diffusion-model-only file?): DreamBench "
                              "needs a full checkpoint with UNet, text encoder and VAE in one file")
    return model, clip, vae


def default_resolution(model) -> int:
    """The model's native training resolution: 1024 for SDXL-family models, 512 otherwise (SD1.x)."""
    import comfy.model_base

    return 1024 if isinstance(model.model, comfy.model_base.SDXL) else 512
