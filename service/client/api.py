"""`Client` and `AsyncClient`: the service's HTTP API as Python calls, over httpx (one API, sync and async).

Every call answers in the seed's Python shape (service.client.shapes.pythonic) or raises an
ApiException (service.client.errors); `api()` gives the API's own JSON for callers that print it.
`watch()` follows the change stream across disconnects and restarts, resuming with Last-Event-ID,
and hands on every change once, in order.

Each call is written once, in `Calls`, out of the sans-I/O core (service.client.core, .paging, .events);
the two clients only send what it builds, and wait, each with its own I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from functools import partial
from typing import Any, Generic, TypeVar

import httpx

from service.client import errors
from service.client.core import (
    BUILDS_PATH,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    SUMMARY_PATH,
    TRANSITIONS_PATH,
    Call,
    Core,
    Flow,
    Moment,
    as_sent,
    export_headers,
    fetch,
    fleet_query,
    image_path,
    images_call,
    log_events_call,
    log_streams_call,
    query,
    stack_events_call,
)
from service.client.events import ImageChange, StreamEvent, Watch
from service.client.paging import Pager
from service.client.shapes import pythonic
from service.client.waiting import DESCRIBE, Outcome, Wait

__all__ = [
    "BUILDS_PATH",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "FLEET_PAGE",
    "SUMMARY_PATH",
    "TRANSITIONS_PATH",
    "AsyncClient",
    "Client",
    "Moment",
    "image_path",
]

# Fleet pages are fetched at the API's largest page size: fewer round trips for the same rows.
FLEET_PAGE = "1000"

# What each client's calls give: an answer, and streams of items, export chunks, stream events and changes.
Answer = TypeVar("Answer")
Items = TypeVar("Items")
Chunks = TypeVar("Chunks")
Events = TypeVar("Events")
Changes = TypeVar("Changes")


def settle(outcome: Outcome) -> dict[str, Any]:
    """wait_image's answer: the document in the seed's shape, or ImageWaitFailed carrying it."""
    document: dict[str, Any] = pythonic(outcome.document)
    if not outcome.reached:
        raise errors.ImageWaitFailed(outcome.reason, document=document)
    return document


def _expire(response: httpx.Response, expired: threading.Event) -> None:
    """At the deadline, end a blocking read: shutting the socket down wakes the thread reading it (closing the
    response from another thread would not)."""
    expired.set()
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _timed_out(image_id: str, timeout: float | None) -> errors.ImageWaitTimeout:
    return errors.ImageWaitTimeout(f"{image_id}: still waiting after {timeout:g}s")


def _images(image_status: str, region: str | None, at: Moment | None) -> Pager:
    at = query(at=at).get("at")  # one moment for every page: "7 days ago" must not move while paging
    return Pager(partial(images_call, image_status, region, at=at), "images", shape=pythonic)


def _history(image_id: str, region: str | None, since: Moment | None, until: Moment | None) -> Flow[Any]:
    pages = Pager.following(
        image_path(image_id, "/history"), query(region=region, since=since, until=until, limit=1000), "transitions"
    )
    transitions = yield from pages.everything()
    return pythonic({"imageId": pages.first["imageId"], "region": pages.first["region"], "transitions": transitions})


class Calls(ABC, Generic[Answer, Items, Chunks, Events, Changes]):
    """Every call of the API, written once: what it asks and what its answer becomes. A client supplies the I/O
    (`_run` a Flow, `_items` of a Pager, `_chunks` of an export, `_events` of a Watch) and with it the types."""

    def __init__(self, base_url: str, *, token: str | None, timeout: float) -> None:
        self._core = Core(base_url, token=token, timeout=timeout)
        self.base_url = self._core.base_url

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Answer:
        """GET `path`: the API's JSON as it is (camelCase, timestamps as text)."""
        return self._run(fetch(lambda: Call(path, dict(params or {})), as_sent))

    def describe_image(self, image_id: str, region: str | None = None, *, at: datetime | str | None = None) -> Answer:
        """pcluster's describe-image; with `at`, the image as the cache knew it then."""
        return self._run(fetch(lambda: Call(image_path(image_id), query(region=region, at=at)), pythonic))

    def list_images(
        self, image_status: str, region: str | None = None, next_token: str | None = None, *, at: Moment | None = None
    ) -> Answer:
        """One page of pcluster's list-images: {"images": [...], "next_token"?}; with `at`, as it was then."""
        return self._run(fetch(lambda: images_call(image_status, region, next_token, at=at), pythonic))

    def iter_images(self, image_status: str, region: str | None = None, *, at: Moment | None = None) -> Items:
        """Every image of every page."""
        return self._items(partial(_images, image_status, region, at))

    def api_pages(
        self, path: str, query: Mapping[str, str], items: str, first: dict[str, Any] | None = None
    ) -> Items:
        """Every item (the API's JSON) of every page of `path`, following nextToken; `first`, when given,
        receives the first page's other fields (its region, horizon, ...)."""
        return self._items(partial(Pager.following, path, query, items, first=first))

    def image_transitions(
        self, region: str | None = None, since: Moment | None = None, until: Moment | None = None, *,
        image_build_status: str | None = None, image_id: str | None = None, source: str | None = None,
        order: str | None = None,
    ) -> Items:  # fmt: skip
        """Every status transition of every image in [since, until), page after page (lazily), oldest first
        unless order="desc"; each as the per-image history's transitions, with its image_id and region."""
        # The window is fixed when the call is made (since=timedelta(days=7): from now), the pages read lazily.
        window = fleet_query(
            region, since, until, imageBuildStatus=image_build_status, imageId=image_id, source=source, order=order
        )
        paged = {**window, "limit": FLEET_PAGE}
        return self._items(partial(Pager.following, TRANSITIONS_PATH, paged, "transitions", shape=pythonic))

    def export_transitions(
        self, media: str = "ndjson", region: str | None = None, since: Moment | None = None,
        until: Moment | None = None, *, image_build_status: str | None = None, image_id: str | None = None,
        source: str | None = None, order: str | None = None,
    ) -> Chunks:  # fmt: skip
        """The same transitions as the service streams them for an export ("ndjson" or "csv"), in chunks of
        bytes as they arrive: write them to a file; nothing is held in memory."""

        def call() -> Call:
            headers = export_headers(media)
            window = fleet_query(
                region, since, until, imageBuildStatus=image_build_status, imageId=image_id, source=source, order=order
            )
            return Call(TRANSITIONS_PATH, window, headers)

        return self._chunks(call)

    def image_builds(
        self, region: str | None = None, since: Moment | None = None, until: Moment | None = None, *,
        version: str | None = None, outcome: str | None = None, image_id: str | None = None, order: str | None = None,
    ) -> Items:  # fmt: skip
        """Every build that started in [since, until), page after page (lazily): start, end, duration, outcome,
        version, failure reasons, time per Image Builder phase."""
        window = fleet_query(region, since, until, version=version, outcome=outcome, imageId=image_id, order=order)
        paged = {**window, "limit": FLEET_PAGE}
        return self._items(partial(Pager.following, BUILDS_PATH, paged, "builds", shape=pythonic))

    def builds_summary(
        self, region: str | None = None, since: Moment | None = None, until: Moment | None = None, *,
        group_by: str = "version",
    ) -> Answer:  # fmt: skip
        """Counts, success rate and duration p50/p90/max per group, and the most frequent failure reasons."""
        return self._run(
            fetch(lambda: Call(SUMMARY_PATH, fleet_query(region, since, until, groupBy=group_by)), pythonic)
        )

    def get_image_stack_events(
        self, image_id: str, region: str | None = None, next_token: str | None = None
    ) -> Answer:
        """One page of pcluster's get-image-stack-events: {"events": [...], "next_token"?}; kept after cleanup."""
        return self._run(fetch(lambda: stack_events_call(image_id, region, next_token), pythonic))

    def list_image_log_streams(
        self, image_id: str, region: str | None = None, next_token: str | None = None
    ) -> Answer:
        """One page of pcluster's list-image-log-streams: {"log_streams": [...], "next_token"?}."""
        return self._run(fetch(lambda: log_streams_call(image_id, region, next_token), pythonic))

    def get_image_log_events(
        self, image_id: str, log_stream_name: str, region: str | None = None, next_token: str | None = None, *,
        start_from_head: bool | None = None, limit: int | None = None, start_time: Moment | None = None,
        end_time: Moment | None = None,
    ) -> Answer:  # fmt: skip
        """One page of pcluster's get-image-log-events: {"events": [...], "next_token", "prev_token"}."""
        return self._run(
            fetch(
                lambda: log_events_call(
                    image_id, log_stream_name, region, next_token, start_from_head=start_from_head, limit=limit,
                    start_time=start_time, end_time=end_time,
                ),
                pythonic,
            )
        )  # fmt: skip

    def image_history(
        self, image_id: str, region: str | None = None, since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> Answer:  # fmt: skip
        """Every status transition of the image (all pages), oldest first: {"image_id", "region", "transitions"}."""
        return self._run(_history(image_id, region, since, until))

    def watch(
        self, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
    ) -> Changes:
        """Every change from now (or after `last_event_id`), forever: reconnects and resumes on its own."""
        return self._changes(self.events(region=region, image_id=image_id, last_event_id=last_event_id))

    def events(
        self, *, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
    ) -> Events:
        """The change stream as the API sends it (camelCase data), resumed across disconnects."""
        return self._events(Watch(region=region, image_id=image_id, last_event_id=last_event_id))

    def wait_image(
        self, image_id: str, region: str | None = None, *, until: str = "complete", timeout: float | None = None
    ) -> Answer:
        """Until the image is BUILD_COMPLETE (until="deleted": gone or DELETE_COMPLETE): its describe document.
        Raises ImageWaitFailed (with the document) when that can no longer come, ImageWaitTimeout after `timeout`
        seconds. Follows the change stream (no polling): it returns within a second of the service knowing."""
        return self._wait(lambda: Wait(image_id, region, until=until), timeout, settle)

    def image_outcome(
        self, image_id: str, region: str | None = None, *, until: str = "complete", timeout: float | None = None
    ) -> Answer:
        """The same wait, answering how it ended (the API's JSON, reached or not) instead of raising on failure."""
        return self._wait(lambda: Wait(image_id, region, until=until), timeout, lambda outcome: outcome)

    # --- the I/O each client supplies ---------------------------------------------------------------------

    @abstractmethod
    def _run(self, flow: Flow[Any]) -> Answer:
        """Send each call the flow yields, send it the JSON, and answer what it returns."""

    @abstractmethod
    def _items(self, pages: Callable[[], Pager]) -> Items:
        """Lazily, every item of every page (the pager is made when the first item is asked for)."""

    @abstractmethod
    def _chunks(self, call: Callable[[], Call]) -> Chunks:
        """Lazily, the streamed body of the call (made when the first chunk is asked for)."""

    @abstractmethod
    def _events(self, watch: Watch) -> Events:
        """What the watch hands on, connection after connection, forever."""

    @abstractmethod
    def _changes(self, events: Events) -> Changes:
        """The events, each as an ImageChange."""

    @abstractmethod
    def _wait(self, start: Callable[[], Wait], limit: float | None, finish: Callable[[Outcome], Any]) -> Answer:
        """Drive the wait (service.client.waiting) to its outcome within `limit` seconds, and answer
        `finish(outcome)`."""


class Client(Calls[Any, Iterator[dict[str, Any]], Iterator[bytes], Iterator[StreamEvent], Iterator[ImageChange]]):
    """The service at `base_url`, with a bearer `token` if it needs one. Use as a context manager, or close()."""

    def __init__(self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(base_url, token=token, timeout=timeout)
        self._http = httpx.Client(base_url=self.base_url, headers=self._core.headers, timeout=self._core.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, call: Call) -> Any:
        try:
            response = self._http.send(self._core.build_request(self._http, call))
        except httpx.TransportError as exc:
            raise self._core.unreachable(exc) from exc
        return self._core.answer(response)

    @contextmanager
    def _open(self, call: Call) -> Iterator[httpx.Response]:
        response = self._http.send(self._core.build_request(self._http, call), stream=True)
        try:
            if response.status_code != 200:
                response.read()  # an error's message is in its body
            yield response
        finally:
            response.close()

    def _run(self, flow: Flow[Any]) -> Any:
        document = None
        try:
            while True:
                document = self._get(flow.send(document))
        except StopIteration as done:
            return done.value

    def _items(self, pages: Callable[[], Pager]) -> Iterator[dict[str, Any]]:
        pager = pages()
        while (call := pager.next_call()) is not None:
            yield from pager.feed(self._get(call))

    def _chunks(self, call: Callable[[], Call]) -> Iterator[bytes]:
        request = call()
        try:
            with self._open(request) as response:
                self._core.streamed(response)
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise self._core.unreachable(exc) from exc

    def _events(self, watch: Watch) -> Iterator[StreamEvent]:
        while True:
            try:
                with self._open(watch.call()) as response:
                    if watch.opened(response):
                        for line in response.iter_lines():
                            if (event := watch.feed(line)) is not None:
                                yield event
            except httpx.TransportError:
                pass  # dropped, reset, timed out: resume from the cursor
            time.sleep(watch.wait())

    def _changes(self, events: Iterator[StreamEvent]) -> Iterator[ImageChange]:
        for event in events:
            yield ImageChange.of(event)

    def _wait(self, start: Callable[[], Wait], limit: float | None, finish: Callable[[Outcome], Any]) -> Any:
        wait = start()
        deadline = None if limit is None else time.monotonic() + limit
        expired = threading.Event()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _timed_out(wait.image_id, limit)
            try:
                with self._open(wait.watch.call()) as response:
                    # A blocking read cannot be given a deadline: at the deadline, the connection is closed under it.
                    timer = None if left is None else threading.Timer(left, _expire, (response, expired))
                    if timer is not None:
                        timer.start()
                    try:
                        if wait.watch.opened(response):
                            for line in response.iter_lines():
                                if wait.line(line) is DESCRIBE:
                                    try:
                                        wait.described_as(self._get(wait.describe_call()))
                                    except errors.NotFoundException as missing:
                                        wait.vanished(missing.message)
                                if wait.done is not None:
                                    return finish(wait.done)
                    finally:
                        if timer is not None:
                            timer.cancel()
            except httpx.TransportError as exc:
                if expired.is_set():
                    raise _timed_out(wait.image_id, limit) from None
                if not wait.described:
                    raise self._core.unreachable(exc) from exc
                # dropped, reset, timed out: resume from the cursor
            except Exception:
                if expired.is_set():
                    raise _timed_out(wait.image_id, limit) from None
                raise
            pause = wait.watch.wait()
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))


class AsyncClient(
    Calls[
        Coroutine[Any, Any, Any], AsyncIterator[dict[str, Any]], AsyncIterator[bytes], AsyncIterator[StreamEvent],
        AsyncIterator[ImageChange],
    ]
):  # fmt: skip
    """The async twin of Client: the same calls, awaited; watch() is an async iterator."""

    def __init__(self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(base_url, token=token, timeout=timeout)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._core.headers, timeout=self._core.timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, call: Call) -> Any:
        try:
            response = await self._http.send(self._core.build_request(self._http, call))
        except httpx.TransportError as exc:
            raise self._core.unreachable(exc) from exc
        return self._core.answer(response)

    @asynccontextmanager
    async def _open(self, call: Call) -> AsyncIterator[httpx.Response]:
        response = await self._http.send(self._core.build_request(self._http, call), stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
            yield response
        finally:
            await response.aclose()

    async def _run(self, flow: Flow[Any]) -> Any:
        document = None
        try:
            while True:
                document = await self._get(flow.send(document))
        except StopIteration as done:
            return done.value

    async def _items(self, pages: Callable[[], Pager]) -> AsyncIterator[dict[str, Any]]:
        pager = pages()
        while (call := pager.next_call()) is not None:
            for item in pager.feed(await self._get(call)):
                yield item

    async def _chunks(self, call: Callable[[], Call]) -> AsyncIterator[bytes]:
        request = call()
        try:
            async with self._open(request) as response:
                self._core.streamed(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise self._core.unreachable(exc) from exc

    async def _events(self, watch: Watch) -> AsyncIterator[StreamEvent]:
        while True:
            try:
                async with self._open(watch.call()) as response:
                    if watch.opened(response):
                        async for line in response.aiter_lines():
                            if (event := watch.feed(line)) is not None:
                                yield event
            except httpx.TransportError:
                pass
            await asyncio.sleep(watch.wait())

    async def _changes(self, events: AsyncIterator[StreamEvent]) -> AsyncIterator[ImageChange]:
        async for event in events:
            yield ImageChange.of(event)

    async def _wait(self, start: Callable[[], Wait], limit: float | None, finish: Callable[[Outcome], Any]) -> Any:
        wait = start()
        try:
            async with asyncio.timeout(limit):
                while True:
                    try:
                        async with self._open(wait.watch.call()) as response:
                            if wait.watch.opened(response):
                                async for line in response.aiter_lines():
                                    if wait.line(line) is DESCRIBE:
                                        try:
                                            wait.described_as(await self._get(wait.describe_call()))
                                        except errors.NotFoundException as missing:
                                            wait.vanished(missing.message)
                                    if wait.done is not None:
                                        return finish(wait.done)
                    except httpx.TransportError as exc:
                        if not wait.described:
                            raise self._core.unreachable(exc) from exc
                    await asyncio.sleep(wait.watch.wait())
        except TimeoutError:
            raise _timed_out(wait.image_id, limit) from None
