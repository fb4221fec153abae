"""Old names that keep working for one release: a module's ``__getattr__``/``__dir__`` that hand out a name
from its new home with a ``DeprecationWarning`` saying where it went."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names"]


def moved_names(
    old_module: str, moved: Mapping[str, str], *, hint: str = ""
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``old_module``: ``moved`` maps each old name to the module that holds it
    now; ``hint`` is appended to the warning (e.g. a shorter import path)."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"{old_module}.{name} is deprecated; import it from {moved[name]}{f' ({hint})' if hint else ''}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(moved[name]), name)

    def __dir__() -> list[str]:
        module = importlib.import_module(old_module)
        return sorted(set(vars(module)) | set(moved))

    return __getattr__, __dir__
