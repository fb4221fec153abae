"""The library's exceptions, in one place.

Every error a user can cause derives from :class:`RWKVVisionError` and from the built-in class a caller
would already catch (``ValueError``), so ``except ValueError`` keeps working:

    RWKVVisionError
      ConfigError        a configuration (a dataclass, or a config.json section) with a missing, unknown or
                         out-of-range field; the message names the field and what was expected
      CheckpointError    a checkpoint file or directory that cannot be read; names the file
      StateDictError     tensors that do not fit the model; lists every missing, unexpected and mis-shaped key
      UnknownNameError   a component name (scan policy, layout, projector, encoder, tokenizer) nobody registered
    ExtensionError       (a RuntimeError) the compiled kernels are required but cannot be loaded
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "RWKVVisionError",
    "ConfigError",
    "CheckpointError",
    "StateDictError",
    "UnknownNameError",
    "ExtensionError",
    "natural_key",
]


class RWKVVisionError(ValueError):
    """Base class of the errors rwkv_vision raises for bad input."""


class ConfigError(RWKVVisionError):
    """A configuration with a missing, unknown or invalid field."""


class CheckpointError(RWKVVisionError):
    """A checkpoint file or directory that cannot be read: the message names the file and what was expected."""


def natural_key(key: str) -> list:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


class StateDictError(RWKVVisionError):
    """A state dict that does not fit the model; lists every missing, unexpected and mis-shaped key.

    Attributes: ``missing`` (list of keys), ``unexpected`` (list of keys), ``mismatched`` (list of
    (key, shape in the state dict, shape the model expects)).
    """

    def __init__(self, missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[tuple], hint: str = ""):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [
            f"state dict does not match the model: {len(self.missing)} missing, {len(self.unexpected)} "
            f"unexpected, {len(self.mismatched)} mis-shaped key(s)"
        ]
        lines += [f"  missing:    {k}" for k in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  mis-shaped: {k}: got {list(got)}, expected {list(want)}" for k, got, want in self.mismatched]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class UnknownNameError(RWKVVisionError):
    """A name that is not registered; the message lists the known names."""


class ExtensionError(RuntimeError):
    """The compiled extension is required (``RWKV_VISION_REQUIRE_EXTENSION=1``) but cannot be used: an
    environment problem, not bad input, hence a RuntimeError."""
