"""Deprecated: the tokenizers moved to :mod:`rwkv_vision.tokenizers` (``WorldTokenizer`` and ``StreamDecoder``
to ``rwkv_vision.tokenizers.world``, the ``Tokenizer`` protocol to ``rwkv_vision.tokenizers.base``).

This module keeps the old names importable for one release; each use warns with a ``DeprecationWarning``.
"""

from __future__ import annotations

from ._moved import moved_names

_MOVED = {
    "Tokenizer": "rwkv_vision.tokenizers.base",
    "WorldTokenizer": "rwkv_vision.tokenizers.world",
    "StreamDecoder": "rwkv_vision.tokenizers.world",
    "WORLD_VOCAB_SIZE": "rwkv_vision.tokenizers.world",
}
__all__ = list(_MOVED)
__getattr__, __dir__ = moved_names(__name__, _MOVED, hint="or rwkv_vision.tokenizers")
