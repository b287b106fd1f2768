"""What the core's registries share: items keyed by a name, filled by the apps at start-up.

The integrity checks, the dashboard tiles and the schedules are each one `Registry`. An app
registers its items from its `AppConfig.ready()` (or a module that start-up imports), which
may run more than once in a process (tests reload apps): registering an equal item again is a
no-op, while a different item under a name already taken is a programming error, raised at
once rather than letting the last one silently win.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Registry(Generic[Item]):
    def __init__(self, kind: str, key: Callable[[Item], str]) -> None:
        self._kind = kind
        self._key = key
        self._items: dict[str, Item] = {}

    def add(self, item: Item) -> Item:
        name = self._key(item)
        existing = self._items.get(name)
        if existing is not None and existing != item:
            raise ValueError(f"{self._kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> Item | None:
        return self._items.get(name)

    def items(self) -> tuple[Item, ...]:
        """Every item, in registration order."""
        return tuple(self._items.values())
