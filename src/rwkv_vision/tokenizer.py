"""Deprecated: the tokenizers moved to :mod:`rwkv_vision.tokenizers` (``WorldTokenizer`` and ``StreamDecoder``
to ``rwkv_vision.tokenizers.world``, the ``Tokenizer`` protocol to ``rwkv_vision.tokenizers.base``).

This module keeps the old names importable for one release; each use warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "Tokenizer": "rwkv_vision.tokenizers.base",
    "WorldTokenizer": "rwkv_vision.tokenizers.world",
    "StreamDecoder": "rwkv_vision.tokenizers.world",
    "WORLD_VOCAB_SIZE": "rwkv_vision.tokenizers.world",
}
__all__ = list(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"rwkv_vision.tokenizer.{name} is deprecated; import it from {_MOVED[name]} (or rwkv_vision.tokenizers)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
