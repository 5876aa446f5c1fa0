"""Reading the change stream: Server-Sent Events line by line, and a cursor that never repeats or skips."""

from __future__ import annotations

import pytest

from service.client.errors import InternalServiceException
from service.client.events import Cursor, EventParser, ImageChange, ServerEvent


def blocks(text: str) -> list[ServerEvent]:
    parser = EventParser()
    return [event for line in text.split("\n") if (event := parser.feed(line)) is not None]


def test_blocks_fields_and_comments_as_eventsource_reads_them() -> None:
    stream = (
        "retry: 2000\nid: 7\n: connected\n\n"
        ": keepalive\n\n"
        'id: 8\nevent: image\ndata: {"imageId":"a",\ndata: "region":"us-east-1"}\n\n'
        "id:9\nevent:gone\ndata:{}\n\n"
    )
    assert blocks(stream) == [
        ServerEvent(id="7", event="message", data="", retry_ms=2000),
        ServerEvent(id="8", event="image", data='{"imageId":"a",\n"region":"us-east-1"}', retry_ms=None),
        ServerEvent(id="9", event="gone", data="{}", retry_ms=None),
    ]


def test_the_cursor_starts_where_the_stream_starts_and_hands_each_change_on_once() -> None:
    cursor = Cursor(None)
    opening = ServerEvent(id="7", event="message", data="", retry_ms=2000)
    change = ServerEvent(id="8", event="image", data='{"imageId": "a", "region": "r"}', retry_ms=None)
    assert cursor.take(opening) is None and cursor.last == 7
    taken = cursor.take(change)
    assert taken is not None and (taken.id, taken.event, taken.data) == (8, "image", {"imageId": "a", "region": "r"})
    # After a reconnect the server may send the last one again, and its opening id: neither moves the cursor.
    assert cursor.take(change) is None
    assert cursor.take(ServerEvent(id="8", event="message", data="", retry_ms=None)) is None
    assert cursor.take(ServerEvent(id="not-a-number", event="image", data="{}", retry_ms=None)) is None
    assert cursor.last == 8


def test_a_cursor_given_a_last_event_id_ignores_the_streams_opening_id() -> None:
    cursor = Cursor(41)
    assert cursor.take(ServerEvent(id="50", event="message", data="", retry_ms=None)) is None
    assert cursor.last == 41


def test_an_image_change_is_in_the_python_shape() -> None:
    cursor = Cursor(None)
    image = cursor.take(ServerEvent("3", "image", '{"imageId":"a","region":"r","imageBuildStatus":"X"}', None))
    gone = cursor.take(ServerEvent("4", "gone", '{"imageId":"a","region":"r","message":"m"}', None))
    assert image is not None and gone is not None
    assert ImageChange.of(image) == ImageChange(3, "image", "a", "r", {"image_id": "a", "region": "r",
                                                                       "image_build_status": "X"})
    assert ImageChange.of(gone) == ImageChange(4, "gone", "a", "r", None)


def test_an_event_that_is_not_json_is_the_services_fault_and_leaves_the_cursor() -> None:
    cursor = Cursor(3)
    with pytest.raises(InternalServiceException):
        cursor.take(ServerEvent(id="4", event="image", data="{not json", retry_ms=None))
    assert cursor.last == 3
