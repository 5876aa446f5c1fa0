"""One time zone: naive means UTC, aware is converted, ISO-8601 text is read the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.support.clock import as_utc, utcnow

NOON = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        pytest.param(NOON, NOON, id="aware-utc"),
        pytest.param(NOON.replace(tzinfo=None), NOON, id="naive-is-utc"),
        pytest.param(NOON.astimezone(timezone(timedelta(hours=2))), NOON, id="aware-plus-two"),
        pytest.param(NOON.astimezone(timezone(timedelta(hours=-7))), NOON, id="aware-minus-seven"),
        pytest.param("2024-05-01T12:00:00.123456Z", NOON, id="text-z"),
        pytest.param("2024-05-01T12:00:00.123456+00:00", NOON, id="text-plus-zero"),
        pytest.param("2024-05-01T14:00:00.123456+02:00", NOON, id="text-plus-two"),
        pytest.param("2024-05-01T12:00:00.123456", NOON, id="text-naive-is-utc"),
        pytest.param("2024-05-01 12:00:00.123456", NOON, id="text-sqlite-form"),
    ],
)
def test_as_utc_is_the_same_instant_in_utc(moment: datetime | str, expected: datetime) -> None:
    converted = as_utc(moment)

    assert converted == expected
    assert converted.tzinfo is UTC


def test_as_utc_refuses_text_that_is_not_iso_8601() -> None:
    with pytest.raises(ValueError):
        as_utc("yesterday")


def test_utcnow_is_aware_utc() -> None:
    assert utcnow().tzinfo is UTC
