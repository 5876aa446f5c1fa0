"""The query string's one reader: Starlette's reading of it, and each parameter checked in full."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from service.api.query import Query
from service.errors import BadRequest


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"region=us-east-1",
        b"imageStatus=AVAILABLE&region=eu-west-1&nextToken=abc",
        b"a=1&a=2",  # the last value wins
        b"a&b=&=c&&d==e",
        b"a%20b=c+d&e=%zz&f=%00",
        b"q=%C3%BC&r=\xc3\xbc&s=\xff",  # percent-encoded UTF-8, and raw bytes (read as latin-1)
        b"x=1;y=2",
    ],
)
def test_a_query_reads_as_starlettes_query_params(raw: bytes) -> None:
    assert dict(Query(raw)) == dict(QueryParams(raw.decode("latin-1")))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (b"sinse=2026-01-01", "unknown query parameter 'sinse'; this route takes: since, until, limit"),
        (b"since=2026-01-01&since=2026-02-01", "query parameter 'since' is given more than once"),
        (b"since=2026-01-01&sin%63e=2026-02-01", "query parameter 'since' is given more than once"),
        (b"since=2026-02-01&until=2026-01-01", "since must be before until"),
        (b"since=2026-01-01&until=2026-01-01", "since must be before until"),
        (b"since=0001-01-01T00:00:00%2B05:00", "since must be an ISO 8601 timestamp"),
        (b"limit=%EF%BC%91", "limit must be a whole number from 1 to 10"),  # a full-width 1
        (b"limit=11", "limit must be a whole number from 1 to 10"),
        (b"limit=-1", "limit must be a whole number from 1 to 10"),
        (b"limit=" + b"1" * 5000, "limit must be a whole number from 1 to 10"),  # int() itself refuses 4,301+ digits
    ],
)
def test_bad_parameters_are_named(query: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        params = Query(query).only(("since", "until", "limit"))
        params.window()
        params.limit(default=5, maximum=10)
    assert message in raised.value.message
    assert raised.value.message.startswith("Bad Request: ")


def test_empty_values_are_not_given() -> None:
    params = Query(b"since=&until=&limit=").only(("since", "until", "limit"))
    assert params.window() == (None, None)
    assert params.limit(default=5, maximum=10) == 5
    assert not params.given("since")


def test_a_route_that_takes_anything_ignores_what_it_does_not_read() -> None:
    params = Query(b"regoin=x&region=&at=")
    assert params.get("region") == "" and params.get("at") == "" and params.get("nope") is None
