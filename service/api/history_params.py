"""The history routes' inputs: their query parameters (each checked in full), the retention horizon, the format.

Every parameter a route does not take, or gets twice, is a 400 naming it: a misspelt `sinse=` must not
silently widen a query to all of history. Empty values mean "not given", as `region=` does elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

from service.api.requests import parse_timestamp, validate_image_id
from service.domain.describe import iso_time
from service.errors import BadRequest
from service.settings import Settings
from service.support.clock import utcnow

VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
ORDERS = ("asc", "desc")

JSON = "application/json"
NDJSON = "application/x-ndjson"
CSV = "text/csv"

HORIZON_HEADER = "X-History-Horizon"
PAST_HORIZON_HEADER = "X-History-Past-Horizon"


class Params:
    """A history route's query string: only the parameters it takes, each at most once."""

    def __init__(self, query: str, *, allowed: Collection[str]) -> None:
        self._values: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in allowed:
                raise BadRequest(
                    f"Bad Request: unknown query parameter {name!r}; this route takes: {', '.join(allowed)}"
                )
            if name in self._values:
                raise BadRequest(f"Bad Request: query parameter {name!r} is given more than once")
            self._values[name] = value

    def text(self, name: str) -> str | None:
        value = self._values.get(name)
        return value if value else None

    def given(self, name: str) -> bool:
        return self.text(name) is not None

    def timestamp(self, name: str) -> datetime | None:
        value = self.text(name)
        return parse_timestamp(value, name=name) if value is not None else None

    def window(self) -> tuple[datetime | None, datetime | None]:
        """`since` (inclusive) and `until` (exclusive): a half-open window, so consecutive windows never overlap."""
        since, until = self.timestamp("since"), self.timestamp("until")
        if since is not None and until is not None and since >= until:
            raise BadRequest(
                f"Bad Request: since must be before until; got since={iso_time(since)} until={iso_time(until)}"
            )
        return since, until

    def choice(self, name: str, choices: Sequence[str], *, default: str | None = None) -> str | None:
        value = self.text(name)
        if value is None:
            return default
        if value not in choices:
            raise BadRequest(f"Bad Request: {name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def limit(self, *, default: int, maximum: int) -> int:
        raw = self.text("limit")
        if raw is None:
            return default
        # ASCII digits matched in full, and few of them: int() refuses "²", and a 5,000-digit number with a ValueError.
        if not WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
            raise BadRequest(f"Bad Request: limit must be a whole number from 1 to {maximum}; got {raw!r}")
        return int(raw)

    def image_id(self, name: str = "imageId") -> str | None:
        value = self.text(name)
        if value is not None:
            validate_image_id(value)
        return value

    def version(self, name: str = "version") -> str | None:
        value = self.text(name)
        if value is not None and not VERSION_PATTERN.fullmatch(value):
            raise BadRequest(f"Bad Request: {name} must be a ParallelCluster version such as 3.9.0; got {value!r}")
        return value


# --- the retention horizon ------------------------------------------------------------------------------


def horizon(settings: Settings) -> datetime:
    """The oldest moment history is kept for (STATUSCACHE_HISTORY_DAYS ago): before it, answers have less."""
    return utcnow() - timedelta(days=settings.history_days)


def horizon_headers(oldest: datetime, *, past: bool) -> dict[str, str]:
    """Every history answer names the horizon; one whose question reached past it says so."""
    headers = {HORIZON_HEADER: iso_time(oldest)}
    if past:
        headers[PAST_HORIZON_HEADER] = "true"
    return headers


def horizon_fields(oldest: datetime, *, past: bool) -> dict[str, object]:
    fields: dict[str, object] = {"horizon": iso_time(oldest)}
    if past:
        fields["pastHorizon"] = True
    return fields


# --- the answer's format -------------------------------------------------------------------------------


def negotiate(accept: str | None, offered: Sequence[str]) -> str:
    """The media type to answer in: the first of `offered` the Accept header prefers (by q, then its order);
    `offered[0]` when it names none of them (no header, */*, or only types not offered)."""
    if not accept:
        return offered[0]
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, _, options = part.strip().partition(";")
        quality = 1.0
        for option in options.split(";"):
            key, _, value = option.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.strip().lower()))
    for _, _, media in sorted(ranked):
        if media in offered:
            return media
        if media in ("*/*", "application/*"):
            return offered[0]
        if media.endswith("/*") and (match := [kind for kind in offered if kind.startswith(media[:-1])]):
            return match[0]
    return offered[0]
