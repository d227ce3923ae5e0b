"""One registry mechanism for blocks, heads and models: a name -> entry dict filled by
decorators, with a ValueError listing the names for an unknown one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from attnzoo._checks import check_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (``"block"``, ``"head"``, ``"model"``) by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; ValueError if ``name`` is taken."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add` (returns the decorated object unchanged)."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry of ``name``; ValueError listing every registered name if unknown."""
        check_choice(name, self.names(), "name")
        return self._entries[name]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)
