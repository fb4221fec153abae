"""Tokenizers: one protocol (:class:`Tokenizer`), the RWKV World tokenizer and the small word tokenizer.

* :mod:`.base` — the :class:`Tokenizer` protocol (``encode``, ``decode``, ``vocab_size``, ``stop_token_ids``,
  ``stream_decoder``; ``save``/``from_file`` for :class:`SavableTokenizer`) and the :data:`TOKENIZERS` registry.
* :mod:`.world` — :class:`WorldTokenizer`, the RWKV "World" vocabulary of the released models (``"world"``).
* :mod:`.word` — :class:`WordTokenizer`, a closed word-level vocabulary for tiny models (``"word"``).
"""

from .base import TOKENIZERS, SavableTokenizer, StreamDecoder, TextStreamDecoder, Tokenizer
from .word import WordTokenizer
from .world import WORLD_STOP_TOKEN_IDS, WORLD_VOCAB_SIZE, WorldTokenizer

__all__ = [
    "Tokenizer",
    "SavableTokenizer",
    "StreamDecoder",
    "TextStreamDecoder",
    "TOKENIZERS",
    "WorldTokenizer",
    "WORLD_VOCAB_SIZE",
    "WORLD_STOP_TOKEN_IDS",
    "WordTokenizer",
]
