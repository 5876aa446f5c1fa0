"""Pure: waiting for an image to be done (`Wait`), on the change stream rather than by polling describe.

A wait opens the image's change stream first, and when the stream says where it starts (its opening `id:`)
describes the image once: a change after that position comes on the stream, one before it is in the describe,
so nothing falls between the two. From then on each change of the image is decided by `outcome`; the stream
is resumed with Last-Event-ID across reconnects (service.client.events.Watch), so no change is missed.

A driver (Client, AsyncClient) repeats: send `watch.call()`; if `watch.opened(response)`, hand each line to
`line()`, and when it answers `DESCRIBE`, send `describe_call()` and hand its JSON (or its 404) to `described()`;
stop as soon as `done` is set. It enforces `timeout` itself, with its own clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.client.core import Call, image_path, query
from service.client.events import StreamEvent, Watch

UNTIL = ("complete", "deleted")

COMPLETE = "BUILD_COMPLETE"
# Waiting for complete: what an image in these states can no longer become (a failed build is not retried in
# place; an image being deleted is not built again).
NEVER_COMPLETE = frozenset({"BUILD_FAILED", "DELETE_IN_PROGRESS", "DELETE_FAILED", "DELETE_COMPLETE"})
DELETED = "DELETE_COMPLETE"
NEVER_DELETED = frozenset({"DELETE_FAILED"})

# What `Wait.line` answers when the driver must describe the image now.
DESCRIBE = object()


@dataclass(frozen=True)
class Outcome:
    """How a wait ended: `reached` what was waited for or not; the image's last document (the API's JSON, or
    for a gone image `{"imageId", "region", "message"}`), whether it is gone, and the reason in words."""

    reached: bool
    document: dict[str, Any]
    gone: bool
    reason: str


def outcome(until: str, document: dict[str, Any], *, gone: bool) -> Outcome | None:
    """Pure: the end of a wait for `until` ("complete" or "deleted") given the image's state now, or None while
    it may still come.

    complete: BUILD_COMPLETE reaches it; BUILD_FAILED, a deletion (in progress, failed or done) or the image
    gone can no longer. deleted: the image gone (or DELETE_COMPLETE) reaches it; DELETE_FAILED can no longer.
    """
    image = document.get("imageId", "?")
    if gone:
        if until == "deleted":
            return Outcome(True, document, True, f"{image} is deleted")
        return Outcome(False, document, True, f"{image} no longer exists: it can no longer reach {COMPLETE}")
    status = str(document.get("imageBuildStatus", ""))
    reason = document.get("cloudformationStackStatusReason") or document.get("imagebuilderImageStatusReason")
    why = f" ({reason})" if reason else ""
    if until == "complete":
        if status == COMPLETE:
            return Outcome(True, document, False, f"{image} is {status}")
        if status in NEVER_COMPLETE:
            return Outcome(False, document, False, f"{image} is {status}{why}: it can no longer reach {COMPLETE}")
        return None
    if status == DELETED:
        return Outcome(True, document, False, f"{image} is {status}")
    if status in NEVER_DELETED:
        return Outcome(False, document, False, f"{image} is {status}{why}: it can no longer be deleted")
    return None


class Wait:
    """The state of one wait, without I/O: the stream followed, whether the describe was made, the outcome."""

    def __init__(self, image_id: str, region: str | None, *, until: str) -> None:
        if until not in UNTIL:
            raise ValueError(f"until must be one of {', '.join(UNTIL)}; got {until!r}")
        self.until = until
        self.image_id = image_id
        self._path = image_path(image_id)  # refuses a malformed id before any request
        self._region = region
        self.watch = Watch(region=region, image_id=image_id)
        # The image's region once the describe told it (the stream without region= carries every region's).
        self.image_region: str | None = region
        self.described = False
        self.done: Outcome | None = None

    def describe_call(self) -> Call:
        return Call(self._path, query(region=self._region))

    def line(self, line: str) -> object | None:
        """One line of the stream: DESCRIBE when the driver must describe now (the stream has said where it
        starts); otherwise None (look at `done`)."""
        event = self.watch.feed(line)
        if event is not None:
            self._decide(event)
        if not self.described and self.watch.cursor.last is not None and self.done is None:
            return DESCRIBE
        return None

    def described_as(self, document: dict[str, Any]) -> None:
        """The describe's answer."""
        self.described = True
        self.image_region = str(document.get("region") or self.image_region or "") or None
        self.done = outcome(self.until, document, gone=False)

    def vanished(self, message: str) -> None:
        """The describe answered 404 (`message`, the service's words): the image is gone."""
        self.described = True
        document = {"imageId": self.image_id, "message": message}
        if self.image_region is not None:
            document["region"] = self.image_region
        self.done = outcome(self.until, document, gone=True)

    def _decide(self, event: StreamEvent) -> None:
        if self.done is not None or not self.described:
            # Before the describe, a change is also in the describe's answer (made after the stream opened).
            return
        if self.image_region is not None and event.data.get("region") not in (None, self.image_region):
            return
        self.done = outcome(self.until, event.data, gone=event.event == "gone")
