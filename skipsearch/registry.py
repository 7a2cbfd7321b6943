"""One small registry type for every named choice (samplers, spaces, extractors, datasets, presets, metrics ...).

``Registry[T]`` maps a name a user types to a value, keeps registration order for help texts, and raises one
unknown-name error that lists the choices. Each stage owns its registries; the CLI offers their names as choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from skipsearch.errors import SkipsearchError

T = TypeVar("T")


class UnknownNameError(SkipsearchError, KeyError):
    """A name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Named values of one kind; ``kind`` names them in messages ('sampler', 'search space' ...)."""

    def __init__(self, kind: str, error: type[SkipsearchError] = UnknownNameError) -> None:
        self.kind, self.error = kind, error
        self._items: dict[str, T] = {}

    def register(self, name: str, value: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = value
        return value

    def unregister(self, name: str) -> None:
        """Remove a registration (tests and plug-ins that registered something temporary)."""
        self._items.pop(name, None)

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated function or class."""
        return lambda value: self.register(name, value)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self._items)}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)
