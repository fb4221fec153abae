"""Deprecated: the word tokenizer moved to :mod:`rwkv_vision.tokenizers.word` (``rwkv_vision.tokenizers``;
``rwkv_vision.data.WordTokenizer`` stays a plain re-export).

This module keeps the old names importable for one release; each use warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NEW = "rwkv_vision.tokenizers.word"
_MOVED = ("WordTokenizer", "END_ID", "TURN_ID", "UNK_ID", "PROMPT_WORDS", "PUNCTUATION")
__all__ = list(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"rwkv_vision.data.word_tokenizer.{name} is deprecated; import it from {_NEW}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_NEW), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
