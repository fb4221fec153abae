"""One generic name -> component registry, so each component is named once, next to its class.

Every kind of swappable part has one :class:`Registry`, defined beside its base class, and each
implementation registers itself where it is defined::

    SCANS = Registry("scan policy")                  # rwkv_vision.scan

    @SCANS.register("bidir")
    class BiDir(ScanPolicy): ...

    SCANS.get("BiDir")       # -> BiDir (names are matched case-insensitively here)
    SCANS.name_of(BiDir())   # -> "bidir" (exact type: a subclass is not "bidir")
    SCANS.names()            # -> ["bidir", "custom", ...]

The registries: ``scan.SCANS`` (scan policies), ``prompt.LAYOUTS`` (prompt layouts),
``vision.projector.PROJECTORS`` (projectors), ``vision.encoders.ENCODERS`` (vision encoder builders),
``tokenizers.TOKENIZERS`` (tokenizers). ``config.json`` names, the ``rwkv-vision`` command's choices and the
``get_*`` / ``create_*`` helpers all read them, so a component registered by a user is accepted everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

from .errors import UnknownNameError

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


def _lower(name: str) -> str:
    return name.lower()


class Registry(Mapping[str, T], Generic[T]):
    """Names (and aliases) -> classes or builder functions of one kind of component.

    Args:
        kind: what is registered, for messages (``"scan policy"``).
        normalize: maps a name to its lookup key (default: lower case; ``None`` for exact names). Names are
            stored normalized, so ``names()`` returns them in that form.

    It is a read-only ``Mapping`` over every name *and alias* (``dict(registry)`` gives the full table);
    :meth:`names` lists the canonical names only.
    """

    def __init__(self, kind: str, *, normalize: Callable[[str], str] | None = _lower):
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty str, got {kind!r}")
        self.kind = kind
        self._normalize = normalize or (lambda name: name)
        self._entries: dict[str, T] = {}  # canonical name -> object
        self._aliases: dict[str, str] = {}  # alias -> canonical name

    # --- registering ---------------------------------------------------------------------------------

    def _key(self, name: Any, what: str = "name") -> str:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} must be a non-empty str, got {name!r}")
        return self._normalize(name)

    @overload
    def register(
        self, name: str, obj: None = None, *, aliases: tuple[str, ...] = (), override: bool = False
    ) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, aliases: tuple[str, ...] = (), override: bool = False) -> T: ...

    def register(self, name, obj=None, *, aliases=(), override=False):
        """Register ``obj`` under ``name`` (and ``aliases``); without ``obj``, a decorator.

        ``@SCANS.register("bidir")`` above a class, or ``ENCODERS.register("tiny-clip", tiny_clip)``.
        Registering a taken name for another object raises unless ``override=True``; registering the same
        object again is a no-op (modules may be re-imported).
        """
        if obj is None:
            return lambda target: self.register(name, target, aliases=aliases, override=override)
        if not callable(obj):
            raise TypeError(f"{self.kind} {name!r}: a registered object must be a class or callable, got {obj!r}")
        if isinstance(aliases, str):
            aliases = (aliases,)
        key = self._key(name)
        alias_keys = [self._key(a, "alias") for a in aliases]
        for k in (key, *alias_keys):
            current = self._resolve(k)
            if current is not None and self._entries[current] is not obj and not override:
                raise ValueError(
                    f"{self.kind} {k!r} is already registered to {self._entries[current]!r}; pass override=True "
                    "to replace it"
                )
        if key in self._aliases:
            del self._aliases[key]
        self._entries[key] = obj
        for a in alias_keys:
            self._entries.pop(a, None)
            self._aliases[a] = key
        return obj

    def unregister(self, name: str) -> T:
        """Remove a canonical name, its aliases and its object; returns the object."""
        key = self._key(name)
        if key not in self._entries:
            raise self._unknown(name)
        self._aliases = {a: k for a, k in self._aliases.items() if k != key}
        return self._entries.pop(key)

    # --- looking up ----------------------------------------------------------------------------------

    def _resolve(self, key: str) -> str | None:
        if key in self._entries:
            return key
        return self._aliases.get(key)

    def _unknown(self, name: Any) -> UnknownNameError:
        return UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names(aliases=True))}")

    def canonical(self, name: str) -> str:
        """The canonical name of a name or alias (``"first"`` -> ``"image_first"``)."""
        key = self._resolve(self._key(name)) if isinstance(name, str) and name else None
        if key is None:
            raise self._unknown(name)
        return key

    def get(self, name: str, default: Any = ...) -> T:  # type: ignore[override]
        """The object registered under ``name`` or an alias; an unknown name raises :class:`UnknownNameError`
        listing the known names (or returns ``default`` when one is given)."""
        try:
            return self._entries[self.canonical(name)]
        except UnknownNameError:
            if default is not ...:
                return default
            raise

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(name) and self._resolve(self._normalize(name)) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names(aliases=True))

    def __len__(self) -> int:
        return len(self._entries) + len(self._aliases)

    def names(self, *, aliases: bool = False) -> list[str]:
        """The canonical names, sorted; with ``aliases=True`` the aliases follow (sorted)."""
        out = sorted(self._entries)
        return out + sorted(self._aliases) if aliases else out

    def aliases(self, name: str | None = None) -> list[str]:
        """All aliases, or those of one name."""
        key = None if name is None else self.canonical(name)
        return sorted(a for a, k in self._aliases.items() if key is None or k == key)

    def name_of(self, obj: Any) -> str | None:
        """The canonical name of a registered object, or of an instance's exact type; None if neither.

        Exact type on purpose: a subclass may behave differently, and the parent's name would then
        describe another component.
        """
        for key, value in self._entries.items():
            if value is obj:
                return key
        for key, value in self._entries.items():
            if isinstance(value, type) and type(obj) is value:
                return key
        return None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
