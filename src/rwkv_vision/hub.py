"""Deprecated: loading and saving moved to :mod:`rwkv_vision.checkpoint` (``checkpoint.pretrained`` for
``from_pretrained``/``save_pretrained``/``describe_checkpoint``, ``checkpoint.files`` for reading files,
``checkpoint.hub`` for the Hugging Face Hub, ``checkpoint.official`` for the released key layouts). This module
keeps the old names working for one release."""

from __future__ import annotations

import warnings

warnings.warn(
    "rwkv_vision.hub is deprecated; use rwkv_vision.checkpoint (e.g. rwkv_vision.checkpoint.from_pretrained)",
    DeprecationWarning,
    stacklevel=2,
)

from .checkpoint import *  # noqa: E402,F401,F403
from .checkpoint import __all__  # noqa: E402,F401
