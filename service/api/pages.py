"""Pagination tokens: opaque, tamper-evident, and good only for the query that issued them.

A `nextToken` is a cursor (where the next page starts: plain JSON, chosen by the query) signed with
the deployment's page key (service.store.keys: the same on every replica and after a restart) for
the canonical form of its query: the route, the region and every filter. A token altered, made up,
truncated, or carried over to another query is refused with a 400 before anything in it is read.

Every paginated route uses this module: `PageTokens.read` on the way in, `PageTokens.issue` on the
way out, with the same `query(...)` for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson

from service.errors import BadToken
from service.support.signing import Signer

PAGE_KEY = "page"
Cursor = TypeVar("Cursor", int, str)


def query(route: str, **filters: object) -> str:
    """The canonical form of a paginated query: a token is tied to this, and to nothing else.

    Pass the values as the route uses them (the resolved region, parsed timestamps as ISO text), so two
    spellings of one query share their tokens. Absent filters (None) are left out.
    """
    present = sorted((name, str(value)) for name, value in filters.items() if value is not None)
    return orjson.dumps([route, present]).decode()


class PageTokens:
    """Issues and reads page tokens with the key `get_key(PAGE_KEY)` gives (in the app: `runtime.keys.get`)."""

    def __init__(self, get_key: Callable[[str], Awaitable[bytes]]) -> None:
        self._get_key = get_key
        self._signer: Signer | None = None

    async def _sign_with(self) -> Signer:
        if self._signer is None:
            key = await self._get_key(PAGE_KEY)
            self._signer = Signer(key, purpose="page")
        return self._signer

    async def issue(self, cursor: int | str, *, query: str) -> str:
        return (await self._sign_with()).sign(orjson.dumps(cursor), context=query)

    async def read(self, token: str | None, *, query: str, kind: type[Cursor]) -> Cursor | None:
        """The cursor a token carries (None without one); BadToken unless we issued it for `query`."""
        if not token:
            # An empty nextToken= is no token, as an empty region= is no region.
            return None
        signer = await self._sign_with()
        try:
            cursor = orjson.loads(signer.verify(token, context=query))
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError too
            raise BadToken() from exc
        # Only a token we signed gets here; the type check guards against a mistake of ours, not a client.
        if type(cursor) is not kind:
            raise BadToken()
        return cursor
