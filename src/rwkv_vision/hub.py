"""Loading and saving VisualRWKV checkpoints: local files or the released Hugging Face files.

The released files (``howard-hou/visualrwkv-6``) are pickled flat dicts of bf16 tensors. They are read with
``torch.load(weights_only=True)`` only (tensors and dicts; nothing else is unpickled), memory-mapped.
``save_pretrained`` writes the same flat layout as safetensors, which loads without pickle at all.
The key names are those of the released files (see ``VisualRWKV.from_official_state_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .models.visualrwkv import VisualRWKV

__all__ = ["OFFICIAL_CHECKPOINTS", "load_checkpoint", "resolve_checkpoint", "from_pretrained", "save_pretrained"]

REPO_ID = "howard-hou/visualrwkv-6"
#: Short names of the released v6.0 checkpoints -> (Hugging Face repo, file).
OFFICIAL_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "visualrwkv-6.0-1b6": (REPO_ID, "VisualRWKV-v060-1B6-v1.0-20240612.pth"),
    "visualrwkv-6.0-3b": (REPO_ID, "VisualRWKV-v060-3B-v1.0-20240612.pth"),
    "visualrwkv-6.0-7b": (REPO_ID, "VisualRWKV-v060-7B-v1.0-20240612.pth"),
}


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` file
    (read with ``weights_only=True``, memory-mapped, on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{str(path)!r} is not a flat dict of tensors (the released VisualRWKV format)")
    return dict(sd)


def resolve_checkpoint(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local file for a path, a short name (``OFFICIAL_CHECKPOINTS``) or ``"owner/repo/file"``;
    the latter two are downloaded to (or found in) the Hugging Face cache."""
    if Path(name_or_path).is_file():
        return Path(name_or_path)
    name = str(name_or_path)
    if name in OFFICIAL_CHECKPOINTS:
        repo_id, filename = OFFICIAL_CHECKPOINTS[name]
    elif name.count("/") >= 2:
        owner, repo, filename = name.split("/", 2)
        repo_id = f"{owner}/{repo}"
    else:
        raise ValueError(
            f"name_or_path: {name!r} is not a file, a known name {sorted(OFFICIAL_CHECKPOINTS)}, "
            "or 'owner/repo/filename'"
        )
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))


def from_pretrained(
    name_or_path: str | os.PathLike, *, revision: str | None = None, device=None, dtype=None, **kwargs: Any
) -> VisualRWKV:
    """A ``VisualRWKV`` from a checkpoint file or released name; ``kwargs`` (``scan``, ``layout``,
    ``tokenizer``, ...) go to ``VisualRWKV.from_official_state_dict``."""
    sd = load_checkpoint(resolve_checkpoint(name_or_path, revision=revision))
    return VisualRWKV.from_official_state_dict(sd, device=device, dtype=dtype, **kwargs)


def save_pretrained(model: VisualRWKV, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model.official_state_dict()`` as one safetensors file (optionally cast to ``dtype``)."""
    from safetensors.torch import save_file

    if not isinstance(model, VisualRWKV):
        raise TypeError(f"model must be a VisualRWKV, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(path)!r}")
    # clone: q/k/v are views of one qkv tensor, and safetensors refuses tensors that share memory
    sd = {k: v.detach().to("cpu", dtype=dtype).contiguous().clone() for k, v in model.official_state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "layout": "visualrwkv-v6.0-official"})
    return path
