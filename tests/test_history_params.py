"""The history routes' inputs: each parameter checked in full, the Accept header read, the horizon named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.api.history_params import CSV, JSON, NDJSON, Params, horizon_fields, horizon_headers, negotiate
from service.errors import BadRequest

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
    ("query", "message"),
    [
        ("sinse=2026-01-01", "unknown query parameter 'sinse'; this route takes: since, until, limit"),
        ("since=2026-01-01&since=2026-02-01", "query parameter 'since' is given more than once"),
        ("since=2026-02-01&until=2026-01-01", "since must be before until"),
        ("since=2026-01-01&until=2026-01-01", "since must be before until"),
        ("since=0001-01-01T00:00:00%2B05:00", "since must be an ISO 8601 timestamp"),
        ("limit=%EF%BC%91", "limit must be a whole number from 1 to 10"),  # a full-width 1
        ("limit=11", "limit must be a whole number from 1 to 10"),
        ("limit=-1", "limit must be a whole number from 1 to 10"),
        ("limit=" + "1" * 5000, "limit must be a whole number from 1 to 10"),  # int() itself refuses 4,301+ digits
    ],
)
def test_bad_parameters_are_named(query: str, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        params = Params(query, allowed=("since", "until", "limit"))
        params.window()
        params.limit(default=5, maximum=10)
    assert message in raised.value.message


def test_empty_values_are_not_given() -> None:
    params = Params("since=&until=&limit=", allowed=("since", "until", "limit"))
    assert params.window() == (None, None)
    assert params.limit(default=5, maximum=10) == 5
    assert not params.given("since")


def test_the_horizon_is_named_and_a_question_past_it_flagged() -> None:
    oldest = datetime(2025, 12, 1, 9, 30, tzinfo=UTC)
    assert horizon_headers(oldest, past=False) == {"X-History-Horizon": "2025-12-01T09:30:00.000Z"}
    assert horizon_headers(oldest, past=True)["X-History-Past-Horizon"] == "true"
    assert horizon_fields(oldest, past=True) == {"horizon": "2025-12-01T09:30:00.000Z", "pastHorizon": True}
    assert horizon_fields(oldest, past=False) == {"horizon": "2025-12-01T09:30:00.000Z"}
