"""The last results of a parser, by their input text.

A call's messages repeat their From, To, Contact, Request-URI and SDP, and a
trunk repeats its own across calls: :class:`Memo` keeps the last ``size``
results so each repeated text is parsed once. It is bounded (the oldest
entry goes first), so a flood of distinct texts costs one insertion and one
eviction each, and it never holds an error: a text that fails to parse
fails every time.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Hashable, TypeVar

__all__ = ["Memo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` results, oldest evicted first."""

    __slots__ = ("size", "_items", "_order")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a memo holds at least one entry")
        self.size = size
        self._items: dict[K, V] = {}
        # The keys, oldest first. The dict's own order would do, but finding
        # its first key skips every entry deleted before it (a scan of
        # hundreds once the memo churns, until the dict is resized).
        self._order: deque[K] = deque()

    def get(self, key: K) -> V | None:
        """The result remembered for ``key``, or ``None``."""
        return self._items.get(key)

    def parsed(self, key: K, parse: Callable[[K], V]) -> V:
        """The result remembered for ``key``, else ``parse(key)``, remembered
        (an exception of ``parse`` goes through, and nothing is kept)."""
        value = self._items.get(key)
        if value is None:
            value = parse(key)
            self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key``, forgetting the oldest when full."""
        items = self._items
        if key not in items:
            order = self._order
            if len(order) >= self.size:
                del items[order.popleft()]
            order.append(key)
        items[key] = value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
