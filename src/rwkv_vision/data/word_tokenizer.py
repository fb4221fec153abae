"""Deprecated: the word tokenizer moved to :mod:`rwkv_vision.tokenizers.word` (``rwkv_vision.tokenizers``;
``rwkv_vision.data.WordTokenizer`` stays a plain re-export).

This module keeps the old names importable for one release; each use warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

from .._moved import moved_names

_MOVED = dict.fromkeys(
    ("WordTokenizer", "END_ID", "TURN_ID", "UNK_ID", "PROMPT_WORDS", "PUNCTUATION"), "rwkv_vision.tokenizers.word"
)
__all__ = list(_MOVED)
__getattr__, __dir__ = moved_names(__name__, _MOVED)
