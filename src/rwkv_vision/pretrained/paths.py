"""Where the shipped models lie: their names and directories (no model code, so the models can ask)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["TOY_MODEL", "list_pretrained", "path", "resolve"]

TOY_MODEL = "shapes-vqa-tiny"
_ROOT = Path(__file__).resolve().parent
#: Files every shipped model directory holds (written by ``VisualRWKV.save_pretrained``).
_REQUIRED = ("config.json", "model.safetensors")


def list_pretrained() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(p.name for p in _ROOT.iterdir() if p.is_dir() and (p / _REQUIRED[0]).is_file())


def path(name: str = TOY_MODEL) -> Path:
    """The directory of a shipped model (config.json, model.safetensors, tokenizer.json), for
    ``VisualRWKV.from_pretrained``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    directory = _ROOT / name
    if not directory.is_dir():
        raise ValueError(f"name: no shipped model {name!r}; shipped: {list_pretrained()}")
    missing = [f for f in _REQUIRED if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the shipped model {name!r} at {directory} lacks {missing}; the package data was not installed "
            "(reinstall rwkv_vision, or check that package data is included in the wheel)"
        )
    return directory


def resolve(name_or_path):
    """A shipped model's directory for its name (``"shapes-vqa-tiny"``), else ``name_or_path`` unchanged.

    An existing file or directory of that name wins, as in transformers' ``from_pretrained``."""
    if isinstance(name_or_path, str) and name_or_path in list_pretrained() and not Path(name_or_path).exists():
        return path(name_or_path)
    return name_or_path
