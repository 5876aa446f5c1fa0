"""Reading a request's headers: Accept-style items weighed by q, the answer's format chosen from them."""

from __future__ import annotations

import pytest

from service.api.errors import JSON
from service.api.requests import negotiate, weighted
from service.api.transitions import CSV, NDJSON

OFFERED = (JSON, NDJSON, CSV)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        ("application/x-ndjson", NDJSON),
        ("text/csv", CSV),
        ("text/csv;charset=utf-8", CSV),
        ("TEXT/CSV", CSV),
        ("text/html, text/csv;q=0.5", CSV),  # html is not offered: the next one it accepts
        ("application/x-ndjson;q=0.4, text/csv;q=0.8", CSV),
        ("text/csv;q=0, application/x-ndjson", NDJSON),  # q=0 means "not this"
        ("text/*", CSV),
        ("application/*", JSON),
        ("text/html", JSON),  # nothing offered is acceptable: JSON, the default, rather than a 406
        ("text/csv;q=abc", JSON),
    ],
)
def test_the_answer_format_follows_the_accept_header(accept: str | None, chosen: str) -> None:
    assert negotiate(accept, OFFERED) == chosen


@pytest.mark.parametrize(
    ("item", "weighed"),
    [
        ("gzip", ("gzip", 1.0)),
        (" GZIP ;q=0.5 ", ("gzip", 0.5)),
        ("identity; Q = 0", ("identity", 0.0)),
        ("x;q=nope;level=1", ("x", 0.0)),  # a q that is no number means "not this"
        ("text/csv;charset=utf-8", ("text/csv", 1.0)),
    ],
)
def test_an_accept_item_is_read_with_its_quality(item: str, weighed: tuple[str, float]) -> None:
    assert weighted(item) == weighed
