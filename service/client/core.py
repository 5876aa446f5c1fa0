"""The client's sans-I/O core: what to ask the service (`Call`), how a call becomes an httpx request, and what an
answer means; `Client` and `AsyncClient` (service.client.api) only send and wait.

As httpx's `BaseClient.build_request` serves both of its clients, `Core` here holds the configuration (URL, token,
timeouts), builds every request and decodes every answer, mapping errors to the ApiException family. A call
that needs several requests is a `Flow`, a generator in the manner of httpx's `Auth.auth_flow`: it yields each
`Call` and is sent that call's JSON, and returns the answer; each client drives it with its own I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from service.client import errors

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
# The stream sends a heartbeat every 15 s: silence for this long means the connection is dead.
STREAM_READ_TIMEOUT = 60.0

IMAGES_PATH = "/v3/images/custom"
TRANSITIONS_PATH = "/v3/image-transitions"
BUILDS_PATH = "/v3/image-builds"
SUMMARY_PATH = "/v3/image-builds/summary"
CHANGES_PATH = "/v3/image-changes"
EXPORT_MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv"}

Params = dict[str, str]
IMAGE_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]+$")

# A moment: an aware datetime, ISO 8601 text as the API takes it, or a timedelta meaning "that long ago".
Moment = datetime | str | timedelta

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One GET to make: the path, its query, the headers besides the client's own, and whether it is the change
    stream (which may be silent between heartbeats, so it reads with the longer timeout)."""

    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    listen: bool = False


# Yields the calls to make, is sent each one's JSON, returns the answer.
Flow = Generator[Call, Any, T]


def moment(value: Moment) -> str:
    if isinstance(value, timedelta):
        value = datetime.now(UTC) - value
    return value.isoformat() if isinstance(value, datetime) else value


def query(**values: Moment | int | None) -> Params:
    """A query string's parameters: the given ones, moments as the API writes them, in the order given."""
    return {
        name: moment(value) if isinstance(value, datetime | str | timedelta) else str(value)
        for name, value in values.items()
        if value is not None
    }


def fleet_query(region: str | None, since: Moment | None, until: Moment | None, **filters: str | None) -> Params:
    return query(region=region, since=since, until=until, **filters)


def image_path(image_id: str, suffix: str = "") -> str:
    """The path of an image's resource; an id pcluster would refuse is refused here, in the service's words.

    Servers decode %2F before routing, so "x/history" would otherwise describe nothing and ask another route.
    """
    if not IMAGE_ID.fullmatch(image_id):
        raise errors.BadRequestException(
            f"Bad Request: {image_id!r} does not match '{IMAGE_ID.pattern}'", status=400
        )
    return f"/v3/images/custom/{quote(image_id, safe='')}{suffix}"


def images_call(image_status: str, region: str | None, next_token: str | None, *, at: Moment | None) -> Call:
    """One page of list-images."""
    return Call(IMAGES_PATH, query(imageStatus=image_status, region=region, nextToken=next_token, at=at))


def stack_events_call(image_id: str, region: str | None, next_token: str | None) -> Call:
    """One page of pcluster's GetImageStackEvents (live, or the evidence kept after cleanup)."""
    return Call(image_path(image_id, "/stackevents"), query(region=region, nextToken=next_token))


def log_streams_call(image_id: str, region: str | None, next_token: str | None) -> Call:
    """One page of pcluster's ListImageLogStreams."""
    return Call(image_path(image_id, "/logstreams"), query(region=region, nextToken=next_token))


def log_events_call(
    image_id: str, log_stream_name: str, region: str | None = None, next_token: str | None = None, *,
    start_from_head: bool | None = None, limit: int | None = None, start_time: Moment | None = None,
    end_time: Moment | None = None,
) -> Call:  # fmt: skip
    """One page of pcluster's GetImageLogEvents. The stream name is one path segment, its slashes encoded
    (`3.2.1/1` as `3.2.1%2F1`), as pcluster's own client sends it."""
    head = None if start_from_head is None else str(start_from_head).lower()
    return Call(
        image_path(image_id, "/logstreams/" + quote(log_stream_name, safe="")),
        query(
            region=region, nextToken=next_token, startFromHead=head, limit=limit, startTime=start_time,
            endTime=end_time,
        ),
    )  # fmt: skip


def export_headers(media: str) -> dict[str, str]:
    """What asks the transitions route for an export instead of a page."""
    if media not in EXPORT_MEDIA:
        raise ValueError(f"media must be one of {', '.join(EXPORT_MEDIA)}; got {media!r}")
    return {"Accept": EXPORT_MEDIA[media]}


def fetch(call: Callable[[], Call], shape: Callable[[Any], T]) -> Flow[T]:
    """One call, its JSON in `shape`. The call is built when the flow starts: an async call's errors (a bad id)
    come when it is awaited, a sync one's when it is made."""
    document = yield call()
    return shape(document)


def as_sent(document: Any) -> Any:
    """The API's JSON as it is."""
    return document


class Core:
    """What both clients hold: the configuration, how each `Call` becomes a request, and what each answer means."""

    def __init__(self, base_url: str, *, token: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Accept": "application/json", "User-Agent": "statuscache-client"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout = httpx.Timeout(timeout)
        self.stream_timeout = httpx.Timeout(timeout, read=max(timeout, STREAM_READ_TIMEOUT))

    def build_request(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        """The request for `call`, on the httpx client made with this configuration (its base URL and headers)."""
        return http.build_request(
            "GET", call.path, params=dict(call.params), headers=dict(call.headers),
            timeout=self.stream_timeout if call.listen else httpx.USE_CLIENT_DEFAULT,
        )  # fmt: skip

    def answer(self, response: httpx.Response) -> Any:
        """An answer's JSON; an error answer is its ApiException."""
        if response.status_code >= 400:
            raise errors.from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise errors.InternalServiceException(
                f"statuscache answered {response.status_code} with a body that is not JSON", status=response.status_code
            ) from exc

    @staticmethod
    def streamed(response: httpx.Response) -> None:
        """A streamed answer (an export) other than 200 is its error; its body must have been read."""
        if response.status_code != 200:
            raise errors.from_response(response)

    def unreachable(self, exc: httpx.TransportError) -> errors.ServiceUnreachableException:
        return errors.unreachable(exc, base_url=self.base_url)
