"""A request's query string, read one way for every route (as Starlette's QueryParams reads it), and its values checked.

`parse(raw)` maps each name to its last value, as `request.query_params` does, without building
Starlette's objects on the hot path; `Query(raw)` is that mapping with the checked readers. pcluster's
own routes (describe, list) ignore parameters they do not take, as pcluster's API does; our routes take
only their own (`Query.only`): any other, or one given twice, is a 400 naming it, so a misspelt `sinse=`
never silently widens a query to all of history.

The checked readers take an empty value as "not given", as `region=` is everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import datetime
from urllib.parse import parse_qsl

from service.api.requests import parse_timestamp, region_from, validate_image_id
from service.domain.describe import iso_time
from service.errors import BadRequest
from service.settings import Settings

VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
ORDERS = ("asc", "desc")


def parse(raw: bytes) -> dict[str, str]:
    """A query string's parameters, each name to its last value, as Starlette's QueryParams reads them (the
    scope's `query_string` as latin-1, then parse_qsl keeping blank values); a plain dict for the fast paths."""
    if not raw:
        return {}
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    # Nothing to unquote: the split parse_qsl would make, at a fraction of its cost (list pages are polled).
    params: dict[str, str] = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            params[name] = value
    return params


class Query(dict[str, str]):
    """A request's query parameters as `parse` reads them, with the checked readers of our routes; `raw` is the
    scope's `query_string`."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes = b"") -> None:
        super().__init__(parse(raw))
        self.raw = raw

    def only(self, allowed: Collection[str]) -> Query:
        """This query, when it holds only parameters of `allowed`, each once; else BadRequest naming the first
        that is not, or that is given again."""
        seen: set[str] = set()
        for name, _ in parse_qsl(self.raw.decode("latin-1"), keep_blank_values=True):
            if name not in allowed:
                raise BadRequest(
                    f"Bad Request: unknown query parameter {name!r}; this route takes: {', '.join(allowed)}"
                )
            if name in seen:
                raise BadRequest(f"Bad Request: query parameter {name!r} is given more than once")
            seen.add(name)
        return self

    def text(self, name: str) -> str | None:
        return self.get(name) or None

    def given(self, name: str) -> bool:
        return self.text(name) is not None

    def region(self, settings: Settings) -> str:
        return region_from(self.get("region"), settings)

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
        return parse_limit(self.text("limit"), default=default, maximum=maximum)

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


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    """A page size: `default` when not given, else a whole number from 1 to `maximum`."""
    if raw is None:
        return default
    # ASCII digits matched in full, and few of them: int() refuses "²", and a 5,000-digit number with a ValueError.
    if not WHOLE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"Bad Request: limit must be a whole number from 1 to {maximum}; got {raw!r}")
    return int(raw)
