"""Time in one zone: every moment the service keeps, compares or prints is an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime | str) -> datetime:
    """`moment` as an aware UTC datetime. A naive one (or an ISO-8601 text without an offset) is taken as UTC.

    Raises ValueError for a text that is not ISO-8601.
    """
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    if moment.tzinfo is UTC:
        return moment
    return moment.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
