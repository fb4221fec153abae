"""Deprecated: the projectors moved to the vision side, :mod:`rwkv_vision.vision.projector`.

This module keeps the old names importable for one release; each use warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NEW = "rwkv_vision.vision.projector"
_MOVED = ("Projector", "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector", "PROJECTORS")
__all__ = list(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"rwkv_vision.layers.projector.{name} is deprecated; import it from {_NEW} (or rwkv_vision.vision)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_NEW), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
