"""Pure: the change stream's Server-Sent Events, read line by line, the cursor that resumes it, and the state of
following it across disconnects (`Watch`).

The stream (GET /v3/image-changes) opens with `retry:` and an `id:` carrying the sequence it starts
after, then one event per change: `id:` the change sequence, `event: image` with the describe document
as data, or `event: gone`. A client that reconnects with `Last-Event-ID: <the last id it saw>` gets
every change after it, possibly one it has already seen again: the cursor drops those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from service.client import errors
from service.client.core import CHANGES_PATH, Call, query
from service.client.shapes import pythonic

# Reconnecting: the server's `retry:` (2 s until it says) at first, doubling while it keeps failing, up to this.
FIRST_RECONNECT_SECONDS = 2.0
MAX_RECONNECT_SECONDS = 30.0


@dataclass(frozen=True)
class ServerEvent:
    """One dispatched block: `data` empty when the block only moved the id (or set `retry`)."""

    id: str | None
    event: str
    data: str
    retry_ms: int | None


class EventParser:
    """The WHATWG EventSource rules for the fields this stream uses (id, event, data, retry, comments)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None

    def feed(self, line: str) -> ServerEvent | None:
        """One line (without its end); a complete block gives its event."""
        if line == "":
            if self._id is None and not self._data and self._retry is None:
                return None
            event = ServerEvent(self._id, self._event or "message", "\n".join(self._data), self._retry)
            self._id, self._event, self._data, self._retry = None, "", [], None
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "id" and "\0" not in value:
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None


@dataclass(frozen=True)
class StreamEvent:
    """A change as the API sends it: its sequence, kind, and JSON data (camelCase, as the API writes it)."""

    id: int
    event: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ImageChange:
    """A change in the seed's Python shape."""

    id: int
    # "image": the image's new state is `document`; "gone": it no longer exists (document None).
    event: str
    image_id: str
    region: str
    document: dict[str, Any] | None

    @classmethod
    def of(cls, event: StreamEvent) -> ImageChange:
        document = pythonic(event.data) if event.event == "image" else None
        return cls(
            id=event.id,
            event=event.event,
            image_id=str(event.data.get("imageId", "")),
            region=str(event.data.get("region", "")),
            document=document,
        )


def sequence(text: str | None) -> int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


class Cursor:
    """Where a watcher is: the last sequence it has seen. Never hands on an event twice."""

    def __init__(self, last: int | None) -> None:
        self.last = last

    def take(self, event: ServerEvent) -> StreamEvent | None:
        """The event to hand on, or None (a repeat, a bare id, a comment-only block)."""
        seq = sequence(event.id)
        if seq is None or (self.last is not None and seq <= self.last and event.data):
            return None
        if not event.data:
            # The stream's opening `id:`: where it starts. Resuming from there misses nothing.
            if self.last is None:
                self.last = seq
            return None
        try:
            data = json.loads(event.data)
        except ValueError as exc:
            message = f"the change stream sent event {seq} with data that is not JSON"
            raise errors.InternalServiceException(message, status=200) from exc
        self.last = seq
        return StreamEvent(seq, event.event, data if isinstance(data, dict) else {"value": data})


class Watch:
    """Following the change stream across disconnects and restarts, without I/O: each change once, in order.

    A driver repeats: send `call()` (it resumes after the last change handed on, with Last-Event-ID); if
    `opened(response)`, hand on what `feed(line)` gives for each line; when the connection ends or drops, sleep
    `wait()` seconds. Something that follows the stream for its own ends (waiting for an image to be done) hands
    a driver its own Watch, or decides on the StreamEvents it gets.
    """

    def __init__(self, *, region: str | None = None, image_id: str | None = None, last_event_id: int | None = None):
        self.cursor = Cursor(last_event_id)
        self._params = query(region=region, imageId=image_id)
        self._parser = EventParser()
        self._delay = FIRST_RECONNECT_SECONDS
        self._failures = 0

    def call(self) -> Call:
        """The next connection: from after the last change handed on (or where the caller said to start)."""
        headers = {"Accept": "text/event-stream"}
        if self.cursor.last is not None:
            headers["Last-Event-ID"] = str(self.cursor.last)
        return Call(CHANGES_PATH, self._params, headers, listen=True)

    def opened(self, response: httpx.Response) -> bool:
        """Whether to read the answer's lines. A stream refused outright (4xx) raises its error (its body must have
        been read); False when reconnecting later may help (5xx, 429: a replica not ready, or busy)."""
        if response.status_code == 200:
            self._parser = EventParser()  # a block never spans two connections
            return True
        if response.status_code >= 500 or response.status_code == 429:
            return False
        raise errors.from_response(response)

    def feed(self, line: str) -> StreamEvent | None:
        """One line (without its end): the change to hand on, when the line completes one not handed on before."""
        block = self._parser.feed(line)
        if block is None:
            return None
        if block.retry_ms is not None:
            self._delay = block.retry_ms / 1000
        event = self.cursor.take(block)
        if event is not None:
            self._failures = 0
        return event

    def wait(self) -> float:
        """A connection ended, dropped or was not taken: the seconds to wait before the next one."""
        self._failures += 1
        return min(MAX_RECONNECT_SECONDS, self._delay * 2.0 ** max(0, self._failures - 1))
