"""Pure: the change stream's Server-Sent Events, read line by line, and the cursor that resumes it.

The stream (GET /v3/image-changes) opens with `retry:` and an `id:` carrying the sequence it starts
after, then one event per change: `id:` the change sequence, `event: image` with the describe document
as data, or `event: gone`. A client that reconnects with `Last-Event-ID: <the last id it saw>` gets
every change after it, possibly one it has already seen again: the cursor drops those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.client.errors import InternalServiceException
from service.client.shapes import pythonic


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
            raise InternalServiceException(message, status=200) from exc
        self.last = seq
        return StreamEvent(seq, event.event, data if isinstance(data, dict) else {"value": data})
