"""Safe files: safetensors only, written atomically, with names that cannot leave their folder."""

import json
import os
import pathlib
import tempfile

import torch


def safe_path(folder: str | os.PathLike, name: str, suffix: str) -> pathlib.Path:
    """folder/name(+suffix); refuses absolute names, '..' and anything that resolves outside `folder`."""
    folder = pathlib.Path(folder).resolve()
    if not name or not name.strip():
        raise ValueError("a file name is required")
    rel = pathlib.PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"file name {name!r} must be relative to {folder} and must not contain '..'")
    if not rel.name.endswith(suffix):
        rel = rel.with_name(rel.name + suffix)
    path = (folder / rel).resolve()
    if folder not in path.parents:
        raise ValueError(f"file name {name!r} resolves outside {folder}")
    return path


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: pathlib.Path, metadata: dict | None = None,
                            raw_metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.

    `metadata` values are stored as JSON (types survive the round trip); `raw_metadata` strings are
    stored as they are, for entries other tools read as plain text (and win over `metadata`).
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update({k: str(v) for k, v in (raw_metadata or {}).items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; any other format is refused (no pickle, ever)."""
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); only safetensors are loaded") from None
