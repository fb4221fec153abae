"""Deprecated: the decoder moved to :mod:`rwkv_vision.decoding` (``from rwkv_vision.decoding import Decoder``).
This module keeps the old import path working for one release."""

from __future__ import annotations

import warnings

warnings.warn(
    "rwkv_vision.inference is deprecated; import Decoder from rwkv_vision.decoding", DeprecationWarning, stacklevel=2
)

from .decoding import Decoder  # noqa: E402

__all__ = ["Decoder"]
