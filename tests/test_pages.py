"""Page tokens: a cursor comes back only from a token this deployment issued for the very same query."""

from __future__ import annotations

import base64

import orjson
import pytest

from service.api import pages
from service.errors import BadToken

KEY = bytes(range(32))
QUERY = pages.query("/v3/images/custom", region="us-east-1", imageStatus="AVAILABLE")


async def key(name: str) -> bytes:
    assert name == pages.PAGE_KEY
    return KEY


def unsigned(value: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.asyncio
async def test_a_cursor_round_trips_through_its_own_query() -> None:
    tokens = pages.PageTokens(key)
    token = await tokens.issue("img-7", query=QUERY)
    assert await tokens.read(token, query=QUERY, kind=str) == "img-7"
    assert await tokens.read(None, query=QUERY, kind=str) is None
    assert await tokens.read("", query=QUERY, kind=str) is None


@pytest.mark.asyncio
async def test_another_replica_with_the_same_key_reads_it() -> None:
    token = await pages.PageTokens(key).issue(41, query=QUERY)
    assert await pages.PageTokens(key).read(token, query=QUERY, kind=int) == 41


def test_the_canonical_query_ignores_absent_filters_and_their_order() -> None:
    assert pages.query("/r", a="1", b=None, c="2") == pages.query("/r", c="2", a="1")
    assert pages.query("/r", a="1") != pages.query("/r", a="2")
    assert pages.query("/r", a="1") != pages.query("/s", a="1")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "token",
    [
        # Tokens the old unsigned format accepted, which were never issued: the issue's findings.
        pytest.param(unsigned({"after": "x"}), id="object-never-issued"),
        pytest.param(unsigned([1]), id="list"),
        pytest.param(unsigned(1e30), id="huge-float"),
        pytest.param(base64.urlsafe_b64encode(b"100000000000000000000").decode(), id="huge-int"),
        pytest.param("garbage!", id="not-base64"),
        pytest.param("WzEsMl0", id="json-not-an-object"),
        pytest.param("a.b", id="bad-signature"),
        pytest.param("x" * 10_000, id="huge"),
    ],
)
async def test_a_token_we_did_not_issue_is_refused(token: str) -> None:
    with pytest.raises(BadToken):
        await pages.PageTokens(key).read(token, query=QUERY, kind=int)


@pytest.mark.asyncio
async def test_a_token_for_another_query_or_key_or_altered_is_refused() -> None:
    tokens = pages.PageTokens(key)
    token = await tokens.issue("img-7", query=QUERY)
    other_query = pages.query("/v3/images/custom", region="us-east-1", imageStatus="FAILED")

    async def other_key(name: str) -> bytes:
        return bytes(32)

    mac = token.partition(".")[2]
    altered = unsigned("img-9") + "." + mac
    for forged, query in ((token, other_query), (altered, QUERY), (token[:-1], QUERY)):
        with pytest.raises(BadToken):
            await tokens.read(forged, query=query, kind=str)
    with pytest.raises(BadToken):
        await pages.PageTokens(other_key).read(token, query=QUERY, kind=str)
    # The right token, read as the wrong kind of cursor (a mistake of ours): refused, not crashed.
    with pytest.raises(BadToken):
        await tokens.read(token, query=QUERY, kind=int)
