"""The library's exceptions, in one place.

Every error a user can cause derives from :class:`RWKVVisionError` and from the built-in class a caller
would already catch (``ValueError``), so ``except ValueError`` keeps working:

    RWKVVisionError
      ConfigError        a configuration (a dataclass, or a config.json section) with a missing, unknown or
                         out-of-range field; the message names the field and what was expected
      CheckpointError    a checkpoint file or directory that cannot be read; names the file
        UnsafeCheckpointError  a pickle refused for safety: it holds objects other than tensors
      ImageError         an image that cannot be opened, or whose processing would exceed the size limits
      DeviceError        a device that does not exist or is not available here (``cuda`` without CUDA); names it
      StateDictError     tensors that do not fit the model; lists the first few missing, unexpected and
                         mis-shaped keys of each kind and how many more there are (all of them in attributes)
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
    "UnsafeCheckpointError",
    "DeviceError",
    "ImageError",
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


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint refused for safety (it holds Python objects other than tensors, whose loading
    could run code); not a corrupt file."""


class DeviceError(RWKVVisionError):
    """A device that does not exist or is not available on this machine; the message names the device."""


class ImageError(RWKVVisionError):
    """An image file that cannot be opened as an image, or an image too large (pixels, aspect ratio) to
    decode or resize within the library's limits; the message names the file or the sizes."""


def natural_key(key: str) -> list:
    """Sort key that orders ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


class StateDictError(RWKVVisionError):
    """A state dict that does not fit the model; the message lists the first :attr:`SHOWN` missing,
    unexpected and mis-shaped keys of each kind and a count of the rest (a hostile file with thousands of
    keys must not give a message of thousands of lines).

    Attributes: ``missing`` (list of keys), ``unexpected`` (list of keys), ``mismatched`` (list of
    (key, shape in the state dict, shape the model expects)) -- complete.
    """

    #: keys of each kind shown in the message
    SHOWN = 8

    def __init__(self, missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[tuple], hint: str = ""):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        self.hint = hint
        lines = [
            f"state dict does not match the model: {len(self.missing)} missing, {len(self.unexpected)} "
            f"unexpected, {len(self.mismatched)} mis-shaped key(s)"
        ]
        n = self.SHOWN

        def some(kind: str, items: list, fmt) -> list[str]:
            out = [f"  {kind} {_short(fmt(x))}" for x in items[:n]]
            if len(items) > n:
                out.append(f"  {kind} ... and {len(items) - n} more")
            return out

        lines += some("missing:   ", self.missing, str)
        lines += some("unexpected:", self.unexpected, str)
        lines += some("mis-shaped:", self.mismatched, lambda m: f"{m[0]}: got {list(m[1])}, expected {list(m[2])}")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def _short(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (a key in a hostile file can be megabytes long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UnknownNameError(RWKVVisionError):
    """A name that is not registered; the message lists the known names."""


class ExtensionError(RuntimeError):
    """The compiled extension is required (``RWKV_VISION_REQUIRE_EXTENSION=1``) but cannot be used: an
    environment problem, not bad input, hence a RuntimeError."""
