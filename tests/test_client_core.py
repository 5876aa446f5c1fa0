"""The client's sans-I/O core without any network: the calls it builds, the pager, the flows, and the Watch that
follows the change stream across reconnects (each connection scripted here as the lines it would deliver)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.client import errors
from service.client.core import (
    Call,
    Core,
    Flow,
    as_sent,
    export_headers,
    fetch,
    image_path,
    images_call,
    query,
)
from service.client.events import MAX_RECONNECT_SECONDS, StreamEvent, Watch
from service.client.paging import Pager
from service.client.shapes import pythonic


def drive(flow: Flow[Any], answers: list[tuple[Call, Any]]) -> tuple[Any, list[Call]]:
    """A flow run against canned answers (call, JSON), as a client runs it against the service."""
    sent: list[Call] = []
    document = None
    try:
        while True:
            call = flow.send(document)
            sent.append(call)
            document = next(answer for asked, answer in answers if asked == call)
    except StopIteration as done:
        return done.value, sent


# --- building calls and reading answers --------------------------------------------------------------------


def test_a_query_keeps_the_given_parameters_in_order_and_writes_moments_as_the_api_takes_them() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert query(region="r", since=moment, until="2026-01-03T00:00:00Z", limit=10, at=None) == {
        "region": "r", "since": "2026-01-02T03:04:05+00:00", "until": "2026-01-03T00:00:00Z", "limit": "10",
    }  # fmt: skip
    ago = datetime.fromisoformat(query(at=timedelta(days=7))["at"])
    assert timedelta(days=7) <= datetime.now(UTC) - ago < timedelta(days=7, seconds=5)


def test_an_id_pcluster_would_refuse_is_refused_before_any_request() -> None:
    assert image_path("cl-1", "/history") == "/v3/images/custom/cl-1/history"
    for bad in ("x/history", "1-bad", "a"):
        with pytest.raises(errors.BadRequestException, match="does not match"):
            image_path(bad)


def test_an_export_asks_for_its_media_and_nothing_else() -> None:
    assert export_headers("csv") == {"Accept": "text/csv"}
    with pytest.raises(ValueError, match="media must be one of ndjson, csv; got 'xml'"):
        export_headers("xml")


def test_requests_carry_the_clients_headers_token_and_the_streams_longer_read_timeout() -> None:
    core = Core("http://svc:8080/", token="secret", timeout=5)
    with httpx.Client(base_url=core.base_url, headers=core.headers, timeout=core.timeout) as http:
        plain = core.build_request(http, Call("/v3/images/custom/a", {"region": "r"}))
        stream = core.build_request(http, Call("/v3/image-changes", {}, {"Accept": "text/event-stream"}, listen=True))
    assert core.base_url == "http://svc:8080"
    assert str(plain.url) == "http://svc:8080/v3/images/custom/a?region=r"
    assert (plain.headers["authorization"], plain.headers["accept"]) == ("Bearer secret", "application/json")
    assert plain.extensions["timeout"] == httpx.Timeout(5).as_dict()
    assert stream.headers["accept"] == "text/event-stream"
    assert stream.extensions["timeout"] == httpx.Timeout(5, read=60).as_dict()


def test_answers_decode_to_json_or_to_the_named_error() -> None:
    core = Core("http://svc", token=None, timeout=5)
    assert "authorization" not in core.headers
    assert core.answer(httpx.Response(200, json={"a": 1})) == {"a": 1}
    missing = httpx.Response(404, json={"message": "No image"})
    with pytest.raises(errors.NotFoundException, match="No image"):
        core.answer(missing)
    with pytest.raises(errors.InternalServiceException, match="not JSON") as garbled:
        core.answer(httpx.Response(200, content=b"<html>"))
    assert garbled.value.status == 200
    with pytest.raises(errors.LimitExceededException) as busy:
        Core.streamed(httpx.Response(429, headers={"Retry-After": "5"}, content=b"slow down"))
    assert (busy.value.retry_after, busy.value.message) == (5, "slow down")
    Core.streamed(httpx.Response(200))


# --- flows and the pager -----------------------------------------------------------------------------------


def test_a_fetch_builds_its_call_only_when_the_flow_starts() -> None:
    flow = fetch(lambda: Call(image_path("x/history")), as_sent)
    with pytest.raises(errors.BadRequestException):
        next(flow)
    call = Call("/v3/images/custom/a")
    assert drive(fetch(lambda: call, pythonic), [(call, {"imageId": "a"})]) == ({"image_id": "a"}, [call])


def test_the_pager_follows_next_tokens_to_the_last_page_and_keeps_the_first_pages_fields() -> None:
    first: dict[str, Any] = {}
    pager = Pager.following("/v3/image-builds", {"since": "s", "limit": "2"}, "builds", first=first)
    assert pager.next_call() == Call("/v3/image-builds", {"since": "s", "limit": "2"})
    assert list(pager.feed({"builds": [1, 2], "horizon": "h", "nextToken": "T1"})) == [1, 2]
    assert pager.next_call() == Call("/v3/image-builds", {"since": "s", "limit": "2", "nextToken": "T1"})
    assert list(pager.feed({"builds": [3], "horizon": "later", "nextToken": ""})) == [3]
    assert pager.next_call() is None
    assert first == {"horizon": "h", "nextToken": "T1"}


def test_a_pager_asks_each_page_as_its_call_says_and_shapes_each_item() -> None:
    pager = Pager(lambda token: images_call("AVAILABLE", "r", token, at="A"), "images", shape=pythonic)
    assert pager.next_call() == Call("/v3/images/custom", {"imageStatus": "AVAILABLE", "region": "r", "at": "A"})
    assert list(pager.feed({"images": [{"imageId": "a"}], "nextToken": "T"})) == [{"image_id": "a"}]
    second = pager.next_call()
    # list-images' own order: the token before the moment.
    assert second is not None and list(second.params.items()) == [
        ("imageStatus", "AVAILABLE"), ("region", "r"), ("nextToken", "T"), ("at", "A"),
    ]  # fmt: skip


def test_everything_is_every_item_of_every_page_as_one_flow() -> None:
    pager = Pager.following("/h", {}, "transitions")
    pages = [
        (Call("/h"), {"transitions": [1], "nextToken": "2"}),
        (Call("/h", {"nextToken": "2"}), {"transitions": [2]}),
    ]
    found, sent = drive(pager.everything(), pages)
    assert found == [1, 2] and sent == [call for call, _ in pages]


# --- the Watch: following the change stream ----------------------------------------------------------------


def change(seq: int) -> list[str]:
    return [f"id: {seq}", "event: image", f'data: {{"imageId":"a","region":"r","seq":{seq}}}', ""]


def connect(watch: Watch, lines: list[str], status: int = 200) -> tuple[Call, list[int]]:
    """One connection: the call the watch asks for, and the ids of what it hands on from these lines."""
    call = watch.call()
    handed: list[StreamEvent] = []
    if watch.opened(httpx.Response(status, json={"message": "not now"})):
        handed = [event for line in lines if (event := watch.feed(line)) is not None]
    return call, [event.id for event in handed]


def test_the_watch_resumes_after_the_last_change_and_never_hands_one_on_twice_or_skips_one() -> None:
    watch = Watch(region="r")
    call, ids = connect(watch, ["retry: 10", "id: 0", ": connected", "", *change(1), *change(2)])
    assert call == Call("/v3/image-changes", {"region": "r"}, {"Accept": "text/event-stream"}, listen=True)
    assert ids == [1, 2]
    # The server may send the last one seen again after a reconnect, then the rest.
    call, ids = connect(watch, ["id: 2", "", *change(2), *change(3), *change(4)])
    assert call.headers == {"Accept": "text/event-stream", "Last-Event-ID": "2"}
    assert ids == [3, 4]


def test_a_block_cut_by_a_dropped_connection_is_not_joined_to_the_next_connections() -> None:
    watch = Watch(last_event_id=4)
    _, ids = connect(watch, ["id: 5", "event: image"])  # dropped mid-block
    assert ids == []
    call, ids = connect(watch, ['data: {"imageId":"b"}', "", *change(5)])
    assert call.headers["Last-Event-ID"] == "4" and ids == [5]


def test_the_wait_is_the_servers_retry_doubling_while_connections_fail_up_to_a_bound() -> None:
    watch = Watch()
    assert [watch.wait() for _ in range(3)] == [2.0, 4.0, 8.0]  # before the server says: 2 s
    connect(watch, ["retry: 500", ""], status=200)
    assert watch.wait() == 0.5 * 2**3  # its retry, still doubling: no change came
    connect(watch, change(1))
    assert watch.wait() == 0.5  # a change came: the connection worked
    assert max(watch.wait() for _ in range(20)) == MAX_RECONNECT_SECONDS


def test_an_unready_or_busy_service_is_retried_and_a_refused_stream_raises() -> None:
    watch = Watch(image_id="a", last_event_id=7)
    for status in (503, 500, 429):
        call, ids = connect(watch, change(8), status=status)
        assert ids == [] and call.headers["Last-Event-ID"] == "7"
    refused = httpx.Response(400, json={"message": "Bad Request: invalid or unsupported region 'mars-1'"})
    with pytest.raises(errors.BadRequestException, match="mars-1"):
        watch.opened(refused)
    with pytest.raises(errors.UnauthorizedClientError):
        watch.opened(httpx.Response(401, json={"message": "no token"}))
