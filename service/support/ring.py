"""A ring of the most recent items of a numbered sequence, and the range of numbers it answers for.

Numbers increase but need not be contiguous (a sequence may skip a number that was never used). The
ring answers "everything after n" exactly when it holds everything after n: for any n >= `floor`,
because every number in (floor, last] that was ever used went into it.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Ring(Generic[T]):
    """At most `capacity` (number, item) pairs; adding one more drops the oldest and moves `floor` to it."""

    def __init__(self, capacity: int, *, start: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._items: deque[tuple[int, T]] = deque(maxlen=capacity)
        # Every number in (floor, last] is either held here or was never used.
        self.floor = start
        self.last = start

    def __len__(self) -> int:
        return len(self._items)

    def append(self, number: int, item: T) -> None:
        if number <= self.last:
            raise ValueError(f"{number} does not follow {self.last}")
        if len(self._items) == self._items.maxlen:
            self.floor = self._items[0][0]
        self._items.append((number, item))
        self.last = number

    def covers(self, after: int) -> bool:
        """Whether `since(after)` is complete: nothing after `after` has been dropped."""
        return after >= self.floor

    def since(self, after: int) -> list[T]:
        """The items numbered above `after`, oldest first. Only complete when `covers(after)`."""
        found: list[T] = []
        for number, item in reversed(self._items):
            if number <= after:
                break
            found.append(item)
        found.reverse()
        return found
