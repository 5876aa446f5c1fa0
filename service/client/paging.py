"""Pure: following a paged answer's nextToken: which page to ask for next, and what each page holds.

A driver asks `next_call()` (None: there is no next page), sends it, and hands the JSON to `feed()`, which gives
that page's items. `everything()` is the same loop as a Flow (service.client.core) that collects every item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from service.client.core import Call, Flow, as_sent


class Pager:
    """The pages of one listing: `page(token)` is the call for the page after `token` (None: the first page);
    `first`, when given, receives the first page's fields other than the items (its region, horizon, ...)."""

    def __init__(
        self,
        page: Callable[[str | None], Call],
        items: str,
        *,
        first: dict[str, Any] | None = None,
        shape: Callable[[Any], Any] = as_sent,
    ) -> None:
        self._page = page
        self._items = items
        self.first: dict[str, Any] = {} if first is None else first
        self._shape = shape
        self._next: Call | None = page(None)
        self._pages = 0

    @classmethod
    def following(
        cls, path: str, query: Mapping[str, str], items: str, *, first: dict[str, Any] | None = None,
        shape: Callable[[Any], Any] = as_sent,
    ) -> Pager:  # fmt: skip
        """The pages of `path`: the query, then the query and nextToken."""

        def page(token: str | None) -> Call:
            return Call(path, {**query, "nextToken": token} if token else dict(query))

        return cls(page, items, first=first, shape=shape)

    def next_call(self) -> Call | None:
        return self._next

    def feed(self, document: Any) -> Iterator[Any]:
        """A page's items (each in the shape asked for, as it is taken); after it, the next page, if any."""
        if self._pages == 0:
            self.first.update({key: value for key, value in document.items() if key != self._items})
        self._pages += 1
        items = document[self._items]
        token = document.get("nextToken")
        self._next = self._page(token) if token else None
        return map(self._shape, items)

    def everything(self) -> Flow[list[Any]]:
        """Every item of every page, in one list."""
        found: list[Any] = []
        while (call := self.next_call()) is not None:
            found.extend(self.feed((yield call)))
        return found
