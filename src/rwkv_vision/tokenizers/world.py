"""The RWKV "World" tokenizer (registered as ``"world"``; the protocol is :mod:`rwkv_vision.tokenizers.base`).

The World vocabulary (``rwkv_vocab_v20230424``, 65,529 entries, vocabulary size 65536) maps ids to byte
strings; encoding is a greedy longest match over the UTF-8 bytes, with no BOS token. Id 0 is the pad /
end-of-text token and decodes to nothing.

Because tokens are bytes, a multi-byte character (CJK, emoji) may be split across tokens, so a prefix of
the ids is not always valid UTF-8. The behaviour here:

- ``decode`` never fails: an incomplete or invalid byte sequence becomes U+FFFD (the replacement character).
  Decoding all ids of a valid text gives the text back exactly.
- ``decode_bytes`` gives the raw bytes, and ``stream_decoder()`` an incremental decoder for streaming that
  holds back an incomplete character until its remaining bytes arrive (what ``generation.TextStreamer`` uses).

Encoding uses the Rust ``pyrwkv_tokenizer`` package; decoding reads the same vocabulary file bytewise
(the package's own decode panics on ids that end inside a character).
"""

from __future__ import annotations

import ast
import codecs
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from .base import TOKENIZERS

__all__ = ["WorldTokenizer", "StreamDecoder", "WORLD_VOCAB_SIZE", "WORLD_STOP_TOKEN_IDS"]

#: The embedding size of World models (the vocabulary file has 65,529 entries; the rest is padding).
WORLD_VOCAB_SIZE = 65536
#: What ends a chat answer: "\n\n" (261, the turn separator), then end-of-text (0); ``generation.CHAT_STOP_TOKENS``.
WORLD_STOP_TOKEN_IDS: tuple[int, ...] = (261, 0)


@cache
def _rust_tokenizer(vocab_file: str | None):
    from pyrwkv_tokenizer import RWKVTokenizer

    return RWKVTokenizer(vocab_filepath=vocab_file)


@cache
def _id_to_bytes(vocab_file: str) -> tuple[bytes, ...]:
    # Each line is "<id> <python literal of a str or bytes> <byte length>".
    table = [b""] * WORLD_VOCAB_SIZE
    for line in Path(vocab_file).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        first, rest = line.split(" ", 1)
        literal, length = rest.rsplit(" ", 1)
        token = ast.literal_eval(literal)
        token = token.encode("utf-8") if isinstance(token, str) else token
        if len(token) != int(length):
            raise ValueError(f"vocabulary {vocab_file}: id {first} has {len(token)} bytes, the file says {length}")
        index = int(first)
        if index >= len(table):
            table.extend([b""] * (index + 1 - len(table)))
        table[index] = token
    return tuple(table)


@TOKENIZERS.register("world")
class WorldTokenizer:
    """The RWKV World tokenizer.

    Example::

        >>> tok = WorldTokenizer()
        >>> tok.encode("Assistant:")
        [5585, 41693, 59]
        >>> tok.decode([5585, 41693, 59])
        'Assistant:'

    Args:
        vocab_file: a World vocabulary file; default the one bundled with ``pyrwkv_tokenizer``.
    """

    vocab_size = WORLD_VOCAB_SIZE
    #: Id of the end-of-text / pad token.
    eos_token_id = 0
    #: Ids that end a chat answer: "\n\n", then end-of-text.
    stop_token_ids: tuple[int, ...] = WORLD_STOP_TOKEN_IDS

    def __init__(self, vocab_file: str | None = None):
        self._rust = _rust_tokenizer(vocab_file)
        self.vocab_file = str(self._rust.vocab_filepath)

    def encode(self, text: str) -> list[int]:
        """Text -> ids (greedy longest match over the UTF-8 bytes, no BOS)."""
        if not isinstance(text, str):
            raise TypeError(f"WorldTokenizer.encode: text must be a str, got {type(text).__name__}")
        return list(self._rust.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self._rust.encode_batch(list(texts))]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Ids -> the bytes they stand for (id 0 and the padding ids give no bytes)."""
        table = _id_to_bytes(self.vocab_file)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(table):
                raise ValueError(f"WorldTokenizer.decode: id {i} is outside the vocabulary [0, {len(table)})")
            out.append(table[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; bytes that do not form complete UTF-8 characters become U+FFFD (never raises on them)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        """An incremental decoder: feed ids as they come, get the text that is complete so far."""
        return StreamDecoder(self)

    def __repr__(self) -> str:
        return f"WorldTokenizer(vocab_file={self.vocab_file!r})"


class StreamDecoder:
    """Decodes ids one step at a time, holding back a character whose bytes have not all arrived.

    ``decode(ids)`` returns the new complete text (possibly ""); ``flush()`` returns what is left (incomplete
    bytes as U+FFFD). Joining all outputs equals ``tokenizer.decode(all_ids)``.
    """

    def __init__(self, tokenizer: WorldTokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, ids: Iterable[int]) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
