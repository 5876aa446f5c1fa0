"""Page tokens for the history routes: a cursor, signed for the exact query it continues.

A token is tamper-evident (service.support.signing, purpose "page") and bound to its query: given with
other filters, or altered, it is a 400, never a page of something else. The key is the deployment's
(service.store.keys), so any replica continues any other's pages. These two functions are the only
place the history routes make or read tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from service.errors import BadToken
from service.runtime import Runtime
from service.support.signing import Signer

KEY_NAME = "page-tokens"
PURPOSE = "page"


def context(route: str, query: Mapping[str, object]) -> str:
    """The canonical form of a query a token continues: its route and every filter, page size aside."""
    return route + "?" + "&".join(f"{name}={'' if value is None else value}" for name, value in sorted(query.items()))


async def _signer(runtime: Runtime) -> Signer:
    return Signer(await runtime.keys.get(KEY_NAME), purpose=PURPOSE)


async def issue(runtime: Runtime, cursor: Mapping[str, Any], *, query: str) -> str:
    return (await _signer(runtime)).sign(orjson.dumps(cursor), context=query)


async def cursor_of(runtime: Runtime, token: str, *, query: str) -> dict[str, Any]:
    """The cursor `token` carries; BadToken unless this deployment issued it for this very query."""
    try:
        value = orjson.loads((await _signer(runtime)).verify(token, context=query))
    except ValueError as exc:  # forged, altered, truncated, another query's, or not JSON
        raise BadToken() from exc
    if not isinstance(value, dict):
        raise BadToken()
    return value
