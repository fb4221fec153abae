"""The one tokenizer protocol of the library, and the registry of tokenizer classes.

What each part of the library uses:

* prompt layouts (``PromptLayout.tokenize``) call ``encode(text) -> list[int]`` (no BOS, no end token);
* answers are read with ``decode(ids) -> str``;
* ``vocab_size`` is the embedding size a model needs for this tokenizer;
* ``stop_token_ids`` end a chat answer, in the order of ``generation.CHAT_STOP_TOKENS``: the turn separator
  ``"\\n\\n"``, then end-of-text (World: ``(261, 0)``);
* ``stream_decoder()`` gives an incremental decoder (``decode(ids) -> str`` of the newly complete text,
  ``flush() -> str``) for streaming, where a character may span several tokens;
* a tokenizer with a file of its own also has ``save(path)`` and a ``from_file(path)`` classmethod
  (:class:`SavableTokenizer`), so ``save_pretrained`` can store it as ``tokenizer.json``.

Only ``encode`` and ``decode`` are strictly required: the library falls back when the others are missing
(no streaming decoder: token-by-token ``decode``; no ``stop_token_ids``: the World chat stops). The
library's own tokenizers implement the whole protocol, and ``isinstance(tok, Tokenizer)`` checks all of it.

Tokenizer classes are registered by name in :data:`TOKENIZERS` (``"world"``, ``"word"``); the name is the
``type`` of the ``tokenizer`` entry of ``config.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from ..registry import Registry

__all__ = ["Tokenizer", "SavableTokenizer", "StreamDecoder", "TextStreamDecoder", "TOKENIZERS"]


@runtime_checkable
class StreamDecoder(Protocol):
    """Decodes ids as they arrive: ``decode(ids)`` returns the newly complete text (possibly ""),
    ``flush()`` what is left; joining all outputs equals ``tokenizer.decode(all_ids)``."""

    def decode(self, ids: Iterable[int]) -> str: ...

    def flush(self) -> str: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Text to ids and back, with what generation and chat need (see the module notes)."""

    vocab_size: int
    stop_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def stream_decoder(self) -> StreamDecoder: ...


@runtime_checkable
class SavableTokenizer(Tokenizer, Protocol):
    """A :class:`Tokenizer` stored in a file of its own: ``save(path)`` and the classmethod ``from_file(path)``."""

    def save(self, path: str | os.PathLike) -> None: ...

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SavableTokenizer: ...


class TextStreamDecoder:
    """The stream decoder of a tokenizer whose every token is whole text (no character spans two tokens)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def flush(self) -> str:
        return ""


#: Tokenizer classes by name (``@TOKENIZERS.register("name")`` next to each class): the ``type`` of the
#: ``config.json`` tokenizer entry. A class with ``from_file`` is stored in a file, others are built bare.
TOKENIZERS: Registry[type] = Registry("tokenizer")
