"""Reading a request: the query string and headers straight from the ASGI scope, and every parameter check."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import parse_qsl

from starlette.types import Scope

from service.domain.models import IMAGE_ID_MAX_LENGTH, IMAGE_ID_PATTERN, REGION_PATTERN
from service.errors import BadRequest
from service.settings import Settings
from service.support.clock import as_utc


def query_params(raw: bytes) -> dict[str, str]:
    """The query string as Starlette reads it (last value wins), without its objects on the hot path."""
    if not raw:
        return {}
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    params: dict[str, str] = {}
    for part in text.split("&"):
        if part:
            key, _, value = part.partition("=")
            params[key] = value
    return params


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (`name` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def is_valid_image_id(image_id: str) -> bool:
    return len(image_id) <= IMAGE_ID_MAX_LENGTH and IMAGE_ID_PATTERN.match(image_id) is not None


def validate_image_id(image_id: str) -> None:
    # Messages as pcluster's API (connexion) words them.
    if len(image_id) > IMAGE_ID_MAX_LENGTH:
        raise BadRequest(f"Bad Request: {image_id!r} is too long")
    if not IMAGE_ID_PATTERN.match(image_id):
        raise BadRequest(f"Bad Request: {image_id!r} does not match '{IMAGE_ID_PATTERN.pattern}'")


def region_from(region: str | None, settings: Settings) -> str:
    """The region a request asks about: its `region` parameter, else the first configured region."""
    if region is None or region == "":
        return settings.default_region
    if region in settings.regions:
        return region
    if not REGION_PATTERN.match(region):
        raise BadRequest(f"invalid or unsupported region '{region}'")
    raise BadRequest(f"region '{region}' is not served here; configured regions: {', '.join(settings.regions)}")


def parse_timestamp(value: str, *, name: str) -> datetime:
    try:
        return as_utc(value)
    except (ValueError, OverflowError) as exc:
        # OverflowError: a moment whose UTC form falls outside years 1-9999 (0001-01-01T00:00:00+05:00).
        raise BadRequest(
            f"Bad Request: {name} must be an ISO 8601 timestamp between years 1 and 9999 UTC, "
            f"e.g. 2022-03-30T23:23:33Z; got {value!r}"
        ) from exc


def optional_timestamp(params: dict[str, str], name: str) -> datetime | None:
    value = params.get(name)
    return parse_timestamp(value, name=name) if value else None


def parse_limit(raw: str | None, *, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}; got {raw!r}")
    return int(raw)


def etag_matches(header_value: str | None, etag: str) -> bool:
    """If-None-Match against one entity tag."""
    if not header_value:
        return False
    candidates = {part.strip() for part in header_value.split(",")}
    return etag in candidates or "*" in candidates
