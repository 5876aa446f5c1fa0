"""Reading a request: its headers straight from the ASGI scope, and the checks of its values (the query string's
reader is service.api.query)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from starlette.types import Scope

from service.domain.models import IMAGE_ID_MAX_LENGTH, IMAGE_ID_PATTERN, REGION_PATTERN
from service.errors import BadRequest
from service.settings import Settings
from service.support.clock import as_utc


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (`name` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def two_headers(scope: Scope, first: bytes, second: bytes) -> tuple[bytes | None, bytes | None]:
    """Two request headers' raw values (names lower-case; the last one of a repeated header), or None."""
    first_value = second_value = None
    for key, value in scope["headers"]:
        if key == first:
            first_value = value
        elif key == second:
            second_value = value
    return first_value, second_value


def weighted(item: str) -> tuple[str, float]:
    """One item of an Accept-style header (`gzip;q=0.5`): its value, lower-cased, and its quality: 1 unless a q
    is given, 0 when that q is not a number."""
    value, _, options = item.strip().partition(";")
    quality = 1.0
    if options:
        for option in options.split(";"):
            name, _, number = option.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(number)
                except ValueError:
                    quality = 0.0
    return value.strip().lower(), quality


def negotiate(accept: str | None, offered: Sequence[str]) -> str:
    """The media type to answer in: the first of `offered` the Accept header prefers (by q, then its order);
    `offered[0]` when it names none of them (no header, */*, or only types not offered)."""
    if not accept:
        return offered[0]
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media, quality = weighted(item)
        if quality > 0:
            ranked.append((-quality, position, media))
    for _, _, media in sorted(ranked):
        if media in offered:
            return media
        if media in ("*/*", "application/*"):
            return offered[0]
        if media.endswith("/*") and (match := [kind for kind in offered if kind.startswith(media[:-1])]):
            return match[0]
    return offered[0]


def validate_image_id(image_id: str) -> None:
    # Messages as pcluster's API (connexion) words them.
    if len(image_id) > IMAGE_ID_MAX_LENGTH:
        raise BadRequest(f"Bad Request: {image_id!r} is too long")
    if not IMAGE_ID_PATTERN.fullmatch(image_id):
        raise BadRequest(f"Bad Request: {image_id!r} does not match '{IMAGE_ID_PATTERN.pattern}'")


def region_from(region: str | None, settings: Settings) -> str:
    """The region a request asks about: its `region` parameter, else the first configured region."""
    if region is None or region == "":
        return settings.default_region
    if region in settings.regions:
        return region
    # pcluster's BadRequestException puts "Bad Request: " before every message; so do we.
    if not REGION_PATTERN.fullmatch(region):
        raise BadRequest(f"Bad Request: invalid or unsupported region '{region}'")
    raise BadRequest(
        f"Bad Request: region '{region}' is not served here; configured regions: {', '.join(settings.regions)}"
    )


def parse_timestamp(value: str, *, name: str) -> datetime:
    try:
        return as_utc(value)
    except (ValueError, OverflowError) as exc:
        # OverflowError: a moment whose UTC form falls outside years 1-9999 (0001-01-01T00:00:00+05:00).
        raise BadRequest(
            f"Bad Request: {name} must be an ISO 8601 timestamp between years 1 and 9999 UTC, "
            f"e.g. 2022-03-30T23:23:33Z; got {value!r}"
        ) from exc


# A change sequence number is a PostgreSQL bigint: at most 19 digits, and no more than 2**63 - 1.
EVENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1


def parse_event_id(raw: str) -> int:
    """A Last-Event-ID (header or `lastEventId`): a change sequence number, 0 to 2**63 - 1, ASCII digits only."""
    if EVENT_ID.fullmatch(raw) is None or int(raw) > MAX_EVENT_ID:
        raise BadRequest(
            f"Bad Request: Last-Event-ID must be a change sequence number from 0 to {MAX_EVENT_ID}; got {raw!r}"
        )
    return int(raw)


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(header_value: str | None, etag: str) -> bool:
    """If-None-Match against one entity tag, compared weakly as RFC 9110 asks: `W/"x"` matches `"x"` (a
    compressed answer, or a proxy, weakens a tag)."""
    if not header_value:
        return False
    if header_value == etag:
        return True  # what a client sends back most of the time: the tag it was given, alone
    candidates = {_opaque(part.strip()) for part in header_value.split(",")}
    return _opaque(etag) in candidates or "*" in candidates
