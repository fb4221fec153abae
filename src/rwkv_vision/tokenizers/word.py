"""A small closed-vocabulary, word-level tokenizer for models trained on :mod:`rwkv_vision.data.shapes`
(registered as ``"word"``; the protocol is :mod:`rwkv_vision.tokenizers.base`).

The RWKV World vocabulary has 65,536 entries; for a model of a few MB its embedding and head alone would
be too big, so a tiny model uses this tokenizer instead: about 150 tokens covering every ShapesVQA word
plus the VisualRWKV prompt format (``"User: ...\\n\\nAssistant: ...\\n\\n"``).

Tokens, in id order (the order is fixed by the word set, so equal word sets give equal ids):

====  ==========  ===================================================================
id    token       role
====  ==========  ===================================================================
0     ``<end>``   end-of-text / padding, decodes to ``""`` (like World's id 0)
1     ``"\\n\\n"``  turn separator: the stop token of generation (like World's 261)
2     ``<unk>``   unknown piece, only produced with ``unknown="unk"``
3     ``"\\n"``
4     ``" "``
5..   ``"?"``, ``"."``, ``","``, ``":"``, then every word ``w`` (sorted) as ``w`` and ``" w"``
====  ==========  ===================================================================

Text is split into pieces ``"\\n\\n"``, ``"\\n"``, a word with at most one leading space, or any other single
character; the pieces concatenate back to the text, so ``decode(encode(s)) == s`` for every ``s`` made of
known pieces. Words are case-sensitive (``"What"`` and ``"what"`` are different words).

Unknown pieces: ``unknown="error"`` (default) raises ``ValueError`` naming them, so a typo in a demo
question is reported rather than silently turned into noise; ``unknown="unk"`` maps them to id 2.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .base import TOKENIZERS, TextStreamDecoder

__all__ = [
    "WordTokenizer",
    "END_ID",
    "TURN_ID",
    "UNK_ID",
    "PROMPT_WORDS",
    "PUNCTUATION",
]

END_ID = 0
TURN_ID = 1
UNK_ID = 2
_END, _TURN, _UNK = "<end>", "\n\n", "<unk>"
#: Single-character tokens besides letters and digits.
PUNCTUATION: tuple[str, ...] = ("?", ".", ",", ":")
#: Words of the VisualRWKV prompt format: roles and the short-answer instruction.
PROMPT_WORDS: tuple[str, ...] = (
    "User",
    "Assistant",
    "Answer",
    "the",
    "question",
    "using",
    "a",
    "single",
    "word",
    "or",
    "phrase",
)
_FORMAT = "rwkv_vision.WordTokenizer"
_VERSION = 1
_UNKNOWN_MODES = ("error", "unk")

# Alternatives are tried in order at each position; "\S|\s" catch every remaining character, so the
# pieces always concatenate to the whole text.
_PIECE = re.compile(r"\n\n|\n| ?[^\W_]+|\S|\s")
_WORD = re.compile(r"[^\W_]+")


def _pieces(text: str) -> list[str]:
    return _PIECE.findall(text)


@TOKENIZERS.register("word")
class WordTokenizer:
    """Word-level tokenizer with ``encode(str) -> list[int]`` and ``decode(ids) -> str``.

    Args:
        words: the words to know (letters and digits only, case kept). Default: every word of
            :func:`rwkv_vision.data.shapes.all_words`. :data:`PROMPT_WORDS` are always added.
        unknown: ``"error"`` (raise on unknown pieces) or ``"unk"`` (map them to ``<unk>``, id 2).

    Example::

        >>> tok = WordTokenizer()
        >>> ids = tok.encode("User: Is there a red circle?\\n\\nAssistant:")
        >>> tok.decode(ids)
        'User: Is there a red circle?\\n\\nAssistant:'
        >>> tok.stop_token_ids
        (1, 0)
    """

    eos_token_id: int = END_ID
    pad_token_id: int = END_ID
    turn_token_id: int = TURN_ID
    unk_token_id: int = UNK_ID
    #: Ids that end generation, in the order of ``generation.CHAT_STOP_TOKENS``: "\n\n", then end-of-text.
    stop_token_ids: tuple[int, ...] = (TURN_ID, END_ID)

    def __init__(self, words: Iterable[str] | None = None, *, unknown: str = "error"):
        if words is None:
            from ..data.shapes import all_words

            words = all_words()
        elif isinstance(words, str):
            raise TypeError("WordTokenizer: words must be an iterable of words, not one str")
        words = set(words) | set(PROMPT_WORDS)
        bad = sorted(w for w in words if not isinstance(w, str) or not _WORD.fullmatch(w))
        if bad:
            raise ValueError(f"WordTokenizer: words must be non-empty runs of letters or digits, got {bad[:10]}")
        tokens = [_END, _TURN, _UNK, "\n", " ", *PUNCTUATION]
        for w in sorted(words):
            tokens += [w, " " + w]
        self._init(tokens, unknown=unknown)

    def _init(self, tokens: Sequence[str], *, unknown: str) -> None:
        if unknown not in _UNKNOWN_MODES:
            raise ValueError(f"WordTokenizer: unknown must be one of {_UNKNOWN_MODES}, got {unknown!r}")
        tokens = list(tokens)
        if tokens[:3] != [_END, _TURN, _UNK]:
            raise ValueError(f"WordTokenizer: the first tokens must be {[_END, _TURN, _UNK]}, got {tokens[:3]}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("WordTokenizer: tokens must be unique")
        for t in tokens[3:]:
            # Every ordinary token must be exactly one piece, or encode could never produce it.
            if not isinstance(t, str) or _pieces(t) != [t]:
                raise ValueError(
                    f"WordTokenizer: {t!r} is not a single piece (word, ' word', newline or one character)"
                )
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.unknown = unknown
        self._ids = {t: i for i, t in enumerate(tokens) if i not in (END_ID, UNK_ID)}
        # <end> decodes to nothing, as the World tokenizer's id 0 does.
        self._text = ("",) + self.tokens[1:]

    # ---- protocol ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (the embedding size a model needs)."""
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no BOS, no end token appended)."""
        if not isinstance(text, str):
            raise TypeError(f"WordTokenizer.encode: text must be a str, got {type(text).__name__}")
        ids, missing = [], []
        for piece in _pieces(text):
            i = self._ids.get(piece)
            if i is None:
                missing.append(piece)
                i = UNK_ID
            ids.append(i)
        if missing and self.unknown == "error":
            shown = sorted(set(missing))[:10]
            raise ValueError(
                f"WordTokenizer.encode: {len(set(missing))} unknown piece(s) {shown} in {text!r}; the vocabulary "
                "has only the dataset and prompt words (construct with unknown='unk' to map them to <unk>)"
            )
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; id 0 gives nothing, ``<unk>`` gives ``"<unk>"``. Out-of-range ids raise ``ValueError``."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self._text):
                raise ValueError(f"WordTokenizer.decode: id {i} is outside the vocabulary [0, {len(self._text)})")
            out.append(self._text[i])
        return "".join(out)

    def stream_decoder(self) -> TextStreamDecoder:
        """An incremental decoder for streaming (every token is whole text, so nothing is held back)."""
        return TextStreamDecoder(self)

    def token_to_id(self, token: str) -> int:
        """The id of one token string (``KeyError`` if absent)."""
        if token == _END:
            return END_ID
        if token == _UNK:
            return UNK_ID
        return self._ids[token]

    def id_to_token(self, index: int) -> str:
        """The token string of an id (``"<end>"`` for 0)."""
        return self.tokens[index]

    @property
    def words(self) -> tuple[str, ...]:
        """The known words (without the leading-space variants), sorted."""
        return tuple(t for t in self.tokens[3:] if _WORD.fullmatch(t))

    # ---- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (stored next to a checkpoint)."""
        return {"format": _FORMAT, "version": _VERSION, "unknown": self.unknown, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordTokenizer:
        """The tokenizer :meth:`to_dict` described, with the same ids."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a WordTokenizer description (expected format {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ValueError(f"WordTokenizer description version {data.get('version')!r} is not supported ({_VERSION})")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or len(tokens) < 3:
            raise ValueError("WordTokenizer description: 'tokens' must be a list of strings")
        tok = cls.__new__(cls)
        tok._init(tokens, unknown=data.get("unknown", "error"))
        return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as UTF-8 JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
            f.write("\n")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> WordTokenizer:
        """Load a tokenizer written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WordTokenizer):
            return NotImplemented
        return self.tokens == other.tokens and self.unknown == other.unknown

    def __hash__(self) -> int:
        return hash((self.tokens, self.unknown))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, unknown={self.unknown!r})"
