"""Deprecated: the projectors moved to the vision side, :mod:`rwkv_vision.vision.projector`.

This module keeps the old names importable for one release; each use warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

from .._moved import moved_names

_MOVED = dict.fromkeys(
    ("Projector", "LinearProjector", "MLPProjector", "GatedMLPProjector", "create_projector", "PROJECTORS"),
    "rwkv_vision.vision.projector",
)
__all__ = list(_MOVED)
__getattr__, __dir__ = moved_names(__name__, _MOVED, hint="or rwkv_vision.vision")
