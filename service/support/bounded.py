"""A memo with a size bound: when full, the next new key starts it over.

Clearing (rather than evicting one entry at a time) keeps every operation O(1) and `get` the plain
dict's: the memos this serves sit on paths taken tens of thousands of times a second, and an entry
that is dropped too early only costs one recomputation.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedDict(dict[K, V]):
    """A dict of at most `max_entries` keys: adding a new key to a full one clears it first.

    Only item assignment is bounded; don't grow one with `update` or `setdefault`.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        super().__init__()
        self.max_entries = max_entries

    def __setitem__(self, key: K, value: V) -> None:
        if len(self) >= self.max_entries and key not in self:
            self.clear()
        super().__setitem__(key, value)
