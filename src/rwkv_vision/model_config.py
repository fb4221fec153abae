"""Deprecated: ``config.json`` reading and writing moved to :mod:`rwkv_vision.checkpoint.config_json`. This
module keeps the old names working for one release."""

from __future__ import annotations

import warnings

warnings.warn(
    "rwkv_vision.model_config is deprecated; use rwkv_vision.checkpoint.config_json",
    DeprecationWarning,
    stacklevel=2,
)

from .checkpoint.config_json import *  # noqa: E402,F401,F403
from .checkpoint.config_json import FORMAT_VERSION, __all__  # noqa: E402,F401
