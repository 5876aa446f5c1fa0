"""`Client` and `AsyncClient`: the service's HTTP API as Python calls, over httpx (one API, sync and async).

Every call answers in the seed's Python shape (service.client.shapes.pythonic) or raises an
ApiException (service.client.errors); `api()` gives the API's own JSON for callers that print it.
`watch()` follows the change stream across disconnects and restarts, resuming with Last-Event-ID,
and hands on every change once, in order.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from service.client import errors
from service.client.events import Cursor, EventParser, ImageChange, StreamEvent
from service.client.shapes import pythonic

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
# The stream sends a heartbeat every 15 s: silence for this long means the connection is dead.
STREAM_READ_TIMEOUT = 60.0
# Reconnecting: the server's `retry:` (2 s) at first, doubling while it keeps failing, up to this.
MAX_RECONNECT_SECONDS = 30.0

Params = dict[str, str]
IMAGE_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]+$")


# A moment: an aware datetime, ISO 8601 text as the API takes it, or a timedelta meaning "that long ago".
Moment = datetime | str | timedelta


def _moment(value: Moment) -> str:
    if isinstance(value, timedelta):
        value = datetime.now(UTC) - value
    return value.isoformat() if isinstance(value, datetime) else value


def _params(**values: Moment | int | None) -> Params:
    return {
        name: _moment(value) if isinstance(value, datetime | str | timedelta) else str(value)
        for name, value in values.items()
        if value is not None
    }


def _fleet_params(
    region: str | None, since: Moment | None, until: Moment | None, **filters: str | None
) -> Params:
    return _params(region=region, since=since, until=until, **filters)


TRANSITIONS_PATH = "/v3/image-transitions"
BUILDS_PATH = "/v3/image-builds"
SUMMARY_PATH = "/v3/image-builds/summary"
# Fleet pages are fetched at the API's largest page size: fewer round trips for the same rows.
FLEET_PAGE = "1000"
EXPORT_MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv"}


def image_path(image_id: str, suffix: str = "") -> str:
    """The path of an image's resource; an id pcluster would refuse is refused here, in the service's words.

    Servers decode %2F before routing, so "x/history" would otherwise describe nothing and ask another route.
    """
    if not IMAGE_ID.fullmatch(image_id):
        raise errors.BadRequestException(
            f"Bad Request: {image_id!r} does not match '{IMAGE_ID.pattern}'", status=400
        )
    return f"/v3/images/custom/{quote(image_id, safe='')}{suffix}"


class _Base:
    def __init__(self, base_url: str, *, token: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "statuscache-client"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = httpx.Timeout(timeout)
        self._stream_timeout = httpx.Timeout(timeout, read=max(timeout, STREAM_READ_TIMEOUT))

    def _result(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise errors.from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise errors.InternalServiceException(
                f"statuscache answered {response.status_code} with a body that is not JSON", status=response.status_code
            ) from exc

    @staticmethod
    def _export_request(media: str) -> dict[str, str]:
        if media not in EXPORT_MEDIA:
            raise ValueError(f"media must be one of {', '.join(EXPORT_MEDIA)}; got {media!r}")
        return {"Accept": EXPORT_MEDIA[media]}

    def _export_failure(self, response: httpx.Response) -> errors.ApiException:
        return errors.from_response(response)

    @staticmethod
    def _stream_params(region: str | None, image_id: str | None) -> Params:
        return _params(region=region, imageId=image_id)

    @staticmethod
    def _resume_headers(cursor: Cursor) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if cursor.last is not None:
            headers["Last-Event-ID"] = str(cursor.last)
        return headers

    @staticmethod
    def _stream_failure(response: httpx.Response) -> errors.ApiException | None:
        """The error to raise for a stream refused outright (4xx); None when reconnecting may help (5xx)."""
        if response.status_code == 200:
            return None
        error = errors.from_response(response)
        return None if response.status_code >= 500 or response.status_code == 429 else error


class Client(_Base):
    """The service at `base_url`, with a bearer `token` if it needs one. Use as a context manager, or close()."""

    def __init__(self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(base_url, token=token, timeout=timeout)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET `path`: the API's JSON as it is (camelCase, timestamps as text)."""
        try:
            response = self._http.get(path, params=dict(params or {}))
        except httpx.TransportError as exc:
            raise errors.unreachable(exc, base_url=self.base_url) from exc
        return self._result(response)

    def describe_image(self, image_id: str, region: str | None = None, *, at: datetime | str | None = None) -> Any:
        """pcluster's describe-image; with `at`, the image as the cache knew it then."""
        return pythonic(self.api(image_path(image_id), _params(region=region, at=at)))

    def list_images(
        self, image_status: str, region: str | None = None, next_token: str | None = None, *, at: Moment | None = None
    ) -> Any:
        """One page of pcluster's list-images: {"images": [...], "next_token"?}; with `at`, as it was then."""
        return pythonic(
            self.api(
                "/v3/images/custom", _params(imageStatus=image_status, region=region, nextToken=next_token, at=at)
            )
        )

    def iter_images(
        self, image_status: str, region: str | None = None, *, at: Moment | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every image of every page."""
        token: str | None = None
        at = _params(at=at).get("at")  # one moment for every page: "7 days ago" must not move while paging
        while True:
            page = self.list_images(image_status, region, token, at=at)
            yield from page["images"]
            token = page.get("next_token")
            if not token:
                return

    def api_pages(
        self, path: str, query: Mapping[str, str], items: str, first: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item (the API's JSON) of every page of `path`, following nextToken; `first`, when given,
        receives the first page's other fields (its region, horizon, ...)."""
        document = self.api(path, query)
        if first is not None:
            first.update({key: value for key, value in document.items() if key != items})
        while True:
            yield from document[items]
            token = document.get("nextToken")
            if not token:
                return
            document = self.api(path, {**query, "nextToken": token})

    def image_transitions(
        self,
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        image_build_status: str | None = None,
        image_id: str | None = None,
        source: str | None = None,
        order: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every status transition of every image in [since, until), page after page (lazily), oldest first
        unless order="desc"; each as the per-image history's transitions, with its image_id and region."""
        query = _fleet_params(
            region, since, until, imageBuildStatus=image_build_status, imageId=image_id, source=source, order=order
        )
        return map(pythonic, self.api_pages(TRANSITIONS_PATH, {**query, "limit": FLEET_PAGE}, "transitions"))

    def export_transitions(
        self,
        media: str = "ndjson",
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        image_build_status: str | None = None,
        image_id: str | None = None,
        source: str | None = None,
        order: str | None = None,
    ) -> Iterator[bytes]:
        """The same transitions as the service streams them for an export ("ndjson" or "csv"), in chunks of
        bytes as they arrive: write them to a file; nothing is held in memory."""
        headers = self._export_request(media)
        query = _fleet_params(
            region, since, until, imageBuildStatus=image_build_status, imageId=image_id, source=source, order=order
        )
        try:
            with self._http.stream("GET", TRANSITIONS_PATH, params=query, headers=headers) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._export_failure(response)
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise errors.unreachable(exc, base_url=self.base_url) from exc

    def image_builds(
        self,
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        version: str | None = None,
        outcome: str | None = None,
        image_id: str | None = None,
        order: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every build that started in [since, until), page after page (lazily): start, end, duration, outcome,
        version, failure reasons, time per Image Builder phase."""
        query = _fleet_params(region, since, until, version=version, outcome=outcome, imageId=image_id, order=order)
        return map(pythonic, self.api_pages(BUILDS_PATH, {**query, "limit": FLEET_PAGE}, "builds"))

    def builds_summary(
        self,
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        group_by: str = "version",
    ) -> Any:
        """Counts, success rate and duration p50/p90/max per group, and the most frequent failure reasons."""
        return pythonic(self.api(SUMMARY_PATH, _fleet_params(region, since, until, groupBy=group_by)))

    def image_history(
        self,
        image_id: str,
        region: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> Any:
        """Every status transition of the image (all pages), oldest first: {"image_id", "region", "transitions"}."""
        first: dict[str, Any] = {}
        query = _params(region=region, since=since, until=until, limit=1000)
        transitions = list(self.api_pages(image_path(image_id, "/history"), query, "transitions", first))
        return pythonic({"imageId": first["imageId"], "region": first["region"], "transitions": transitions})

    def watch(
        self, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
    ) -> Iterator[ImageChange]:
        """Every change from now (or after `last_event_id`), forever: reconnects and resumes on its own."""
        for event in self.events(region=region, image_id=image_id, last_event_id=last_event_id):
            yield ImageChange.of(event)

    def events(
        self, *, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
    ) -> Iterator[StreamEvent]:
        """The change stream as the API sends it (camelCase data), resumed across disconnects."""
        cursor = Cursor(last_event_id)
        delay, failures = 2.0, 0
        params = self._stream_params(region, image_id)
        while True:
            try:
                with self._http.stream(
                    "GET", "/v3/image-changes", params=params, headers=self._resume_headers(cursor),
                    timeout=self._stream_timeout,
                ) as response:  # fmt: skip
                    if response.status_code != 200:
                        response.read()
                        refused = self._stream_failure(response)
                        if refused is not None:
                            raise refused
                    else:
                        parser = EventParser()
                        for line in response.iter_lines():
                            block = parser.feed(line)
                            if block is None:
                                continue
                            if block.retry_ms is not None:
                                delay = block.retry_ms / 1000
                            event = cursor.take(block)
                            if event is not None:
                                failures = 0
                                yield event
            except httpx.TransportError:
                pass  # dropped, reset, timed out: resume from the cursor
            failures += 1
            time.sleep(min(MAX_RECONNECT_SECONDS, delay * 2 ** max(0, failures - 1)))


class AsyncClient(_Base):
    """The async twin of Client: the same calls, awaited; watch() is an async iterator."""

    def __init__(self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(base_url, token=token, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            response = await self._http.get(path, params=dict(params or {}))
        except httpx.TransportError as exc:
            raise errors.unreachable(exc, base_url=self.base_url) from exc
        return self._result(response)

    async def describe_image(
        self, image_id: str, region: str | None = None, *, at: datetime | str | None = None
    ) -> Any:
        return pythonic(await self.api(image_path(image_id), _params(region=region, at=at)))

    async def list_images(
        self, image_status: str, region: str | None = None, next_token: str | None = None, *, at: Moment | None = None
    ) -> Any:
        return pythonic(
            await self.api(
                "/v3/images/custom", _params(imageStatus=image_status, region=region, nextToken=next_token, at=at)
            )
        )

    async def iter_images(
        self, image_status: str, region: str | None = None, *, at: Moment | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        at = _params(at=at).get("at")
        while True:
            page = await self.list_images(image_status, region, token, at=at)
            for image in page["images"]:
                yield image
            token = page.get("next_token")
            if not token:
                return

    async def api_pages(
        self, path: str, query: Mapping[str, str], items: str, first: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        document = await self.api(path, query)
        if first is not None:
            first.update({key: value for key, value in document.items() if key != items})
        while True:
            for item in document[items]:
                yield item
            token = document.get("nextToken")
            if not token:
                return
            document = await self.api(path, {**query, "nextToken": token})

    async def _pythonic_pages(self, path: str, query: Params, items: str) -> AsyncIterator[dict[str, Any]]:
        async for item in self.api_pages(path, query, items):
            yield pythonic(item)

    def image_transitions(
        self,
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        image_build_status: str | None = None,
        image_id: str | None = None,
        source: str | None = None,
        order: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        query = _fleet_params(
            region, since, until, imageBuildStatus=image_build_status, imageId=image_id, source=source, order=order
        )
        return self._pythonic_pages(TRANSITIONS_PATH, {**query, "limit": FLEET_PAGE}, "transitions")

    async def export_transitions(
        self,
        media: str = "ndjson",
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        image_build_status: str | None = None,
        image_id: str | None = None,
        source: str | None = None,
        order: str | None = None,
    ) -> AsyncIterator[bytes]:
        headers = self._export_request(media)
        query = _fleet_params(
            region, since, until, imageBuildStatus=image_build_status, imageId=image_id, source=source, order=order
        )
        try:
            async with self._http.stream("GET", TRANSITIONS_PATH, params=query, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._export_failure(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise errors.unreachable(exc, base_url=self.base_url) from exc

    def image_builds(
        self,
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        version: str | None = None,
        outcome: str | None = None,
        image_id: str | None = None,
        order: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        query = _fleet_params(region, since, until, version=version, outcome=outcome, imageId=image_id, order=order)
        return self._pythonic_pages(BUILDS_PATH, {**query, "limit": FLEET_PAGE}, "builds")

    async def builds_summary(
        self,
        region: str | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        *,
        group_by: str = "version",
    ) -> Any:
        return pythonic(await self.api(SUMMARY_PATH, _fleet_params(region, since, until, groupBy=group_by)))

    async def image_history(
        self,
        image_id: str,
        region: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> Any:
        first: dict[str, Any] = {}
        query = _params(region=region, since=since, until=until, limit=1000)
        pages = self.api_pages(image_path(image_id, "/history"), query, "transitions", first)
        transitions = [item async for item in pages]
        return pythonic({"imageId": first["imageId"], "region": first["region"], "transitions": transitions})

    async def watch(
        self, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
    ) -> AsyncIterator[ImageChange]:
        async for event in self.events(region=region, image_id=image_id, last_event_id=last_event_id):
            yield ImageChange.of(event)

    async def events(
        self, *, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
    ) -> AsyncIterator[StreamEvent]:
        cursor = Cursor(last_event_id)
        delay, failures = 2.0, 0
        params = self._stream_params(region, image_id)
        while True:
            try:
                async with self._http.stream(
                    "GET", "/v3/image-changes", params=params, headers=self._resume_headers(cursor),
                    timeout=self._stream_timeout,
                ) as response:  # fmt: skip
                    if response.status_code != 200:
                        await response.aread()
                        refused = self._stream_failure(response)
                        if refused is not None:
                            raise refused
                    else:
                        parser = EventParser()
                        async for line in response.aiter_lines():
                            block = parser.feed(line)
                            if block is None:
                                continue
                            if block.retry_ms is not None:
                                delay = block.retry_ms / 1000
                            event = cursor.take(block)
                            if event is not None:
                                failures = 0
                                yield event
            except httpx.TransportError:
                pass
            failures += 1
            await asyncio.sleep(min(MAX_RECONNECT_SECONDS, delay * 2 ** max(0, failures - 1)))
