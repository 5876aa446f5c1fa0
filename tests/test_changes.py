"""The change stream (GET /v3/image-changes) end to end: exactly once and in order, whatever the writers do."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from starlette.types import Message

from service.api.app import create_app
from service.api.changes import ChangeStream, StreamFront
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.domain.models import Change, ConfigLocation, Observed, Source, StackInfo
from service.runtime import Runtime
from service.settings import Settings
from service.store import db, queries
from tests.conftest import OTHER_REGION, REGION, serving

pytestmark = pytest.mark.asyncio

T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
URL = "/v3/image-changes"


def stack_change(image_id: str, status: str, *, at: datetime, region: str = REGION, padding: int = 0) -> Change:
    tags = (("parallelcluster:image_id", image_id), ("parallelcluster:version", "3.9.0"))
    info = StackInfo(
        name=image_id,
        stack_id=f"arn:aws:cloudformation:{region}:123456789012:stack/{image_id}/1",
        status=status,
        creation_time=T,
        # A big tag makes a big event (what fills a socket's buffers quickly).
        tags=(*tags, ("padding", "x" * padding)) if padding else tags,
    )
    return Change(
        region=region, image_id=image_id, source=Source.RECONCILE, observed_at=at,
        stack=Observed(at, info), ami=Observed(at, None),
        config=Observed(at, ConfigLocation(bucket="b", key=f"{image_id}/image-config.yaml", available=True)),
    )


async def write(
    runtime: Runtime, image_ids: Sequence[str], *, step: int = 0, region: str = REGION, padding: int = 0
) -> list[int]:
    """One new revision of each image (a stack status for `step`), in one batch; their sequence numbers."""
    status = ("CREATE_IN_PROGRESS", "CREATE_COMPLETE", "DELETE_IN_PROGRESS")[step % 3]
    at = T + timedelta(minutes=step)
    results = await runtime.cache.apply_many(
        [stack_change(image_id, status, at=at, region=region, padding=padding) for image_id in image_ids]
    )
    return [result.seq for result in results if result.seq is not None]


class Follower:
    """A client reading a stream in the background: the ids it received, and the comments."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.ids: list[int] = []
        self.events: list[dict[str, str]] = []
        self.comments: list[str] = []
        self.ended = False
        # Set whenever a line arrives (or the stream ends).
        self.arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        current: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif not line:
                    # An event is a block with data (the opening block's `id:` only sets the resume point).
                    if "id" in current and "data" in current:
                        self.ids.append(int(current["id"]))
                        self.events.append(current)
                    current = {}
                else:
                    key, _, value = line.partition(": ")
                    current[key] = value
                self.arrived.set()
        finally:
            self.ended = True
            self.arrived.set()

    async def wait_for(self, done: Callable[[], bool], *, within: float = 10) -> None:
        async with asyncio.timeout(within):
            while not done() and not self.ended:
                self.arrived.clear()
                await self.arrived.wait()

    async def until(self, count: int, *, within: float = 10) -> list[int]:
        """The ids received, once there are `count` (or the stream ended)."""
        await self.wait_for(lambda: len(self.ids) >= count, within=within)
        return self.ids

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def following(http: httpx.AsyncClient, **params: Any) -> AsyncIterator[Follower]:
    headers = {"Last-Event-ID": str(params.pop("last_event_id"))} if "last_event_id" in params else {}
    async with http.stream("GET", URL, params=params, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        follower = Follower(response)
        # Connected (and caught up) once the opening comment has arrived.
        await follower.wait_for(lambda: ": connected" in follower.comments)
        try:
            yield follower
        finally:
            await follower.stop()


@contextlib.asynccontextmanager
async def served(runtime: Runtime, **tuning: Any) -> AsyncIterator[httpx.AsyncClient]:
    runtime.settings = dataclasses.replace(runtime.settings, sse_poll_seconds=0.05, **tuning)
    async with serving(create_app(runtime.settings, runtime=runtime)) as base:
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            yield http


class QueryCounter:
    """Counts the change-feed queries: the tailer's (no bound) and a client's catch-up (`upto` given)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tailer = 0
        self.catch_up = 0
        self.original = queries.revisions_after
        monkeypatch.setattr(queries, "revisions_after", self)

    async def __call__(self, *args: Any, **kwargs: Any) -> list[queries.Revision]:
        if kwargs.get("upto") is None:
            self.tailer += 1
        else:
            self.catch_up += 1
        return await self.original(*args, **kwargs)


async def test_every_change_reaches_each_client_once_and_in_order_by_its_filter(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    async with served(runtime) as http:
        async with (
            following(http) as everything,
            following(http, region=OTHER_REGION) as other_region,
            following(http, imageId="img-2") as one_image,
        ):
            written: list[tuple[int, str, str]] = []
            for step in range(3):
                for region in (REGION, OTHER_REGION):
                    ids = [f"img-{index}" for index in range(4)]
                    seqs = await write(runtime, ids, step=step, region=region)
                    written += [(seq, region, image_id) for seq, image_id in zip(seqs, ids, strict=True)]
            assert await everything.until(len(written)) == [seq for seq, _, _ in written]
            assert await other_region.until(12) == [seq for seq, region, _ in written if region == OTHER_REGION]
            assert await one_image.until(6) == [seq for seq, _, image_id in written if image_id == "img-2"]
            await asyncio.sleep(0.2)
            # Nothing more, nothing twice.
            assert (len(everything.ids), len(other_region.ids), len(one_image.ids)) == (24, 12, 6)
    event = everything.events[0]
    assert event["event"] == "image" and orjson.loads(event["data"])["imageId"] == "img-0"


async def test_a_client_resuming_within_the_ring_is_served_from_memory(
    runtime: Runtime, aws_state: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = QueryCounter(monkeypatch)
    async with served(runtime) as http:
        async with following(http) as first:
            seqs = await write(runtime, [f"ring-{index}" for index in range(5)])
            await first.until(5)
        async with following(http, last_event_id=seqs[1]) as resumed:
            assert await resumed.until(3) == seqs[2:]
            more = await write(runtime, ["ring-0"], step=1)
            assert await resumed.until(4) == seqs[2:] + more
    assert counter.catch_up == 0


async def test_a_client_resuming_from_before_the_ring_catches_up_from_the_database_then_joins(
    runtime: Runtime, aws_state: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = QueryCounter(monkeypatch)
    early = await write(runtime, [f"early-{index}" for index in range(30)])
    async with served(runtime, sse_ring_size=4) as http:
        async with following(http) as first:
            # Changes keep coming while the late client catches up: each catch-up query lets more land first,
            # so the ring moves on beneath it.
            landed: list[int] = []
            original = counter.original
            # Racing writes happen one at a time, and none once the test has stopped them: a write still in
            # flight when the expectation is taken would land after it, unexpected.
            race = asyncio.Lock()
            racing_on = [True]

            async def racing(*args: Any, **kwargs: Any) -> list[queries.Revision]:
                wrote = False
                if kwargs.get("upto") is not None:
                    async with race:
                        if racing_on[0] and len(landed) < 40:
                            landed.extend(await write(runtime, [f"late-{len(landed) + index}" for index in range(10)]))
                            wrote = True
                if wrote:
                    # The tailer reads them (its ring of 4 moves past this query's bound) before the query runs.
                    await asyncio.sleep(0.3)
                return await original(*args, **kwargs)

            counter.original = racing
            async with following(http, last_event_id=early[2]) as late:
                counter.original = original
                async with race:
                    racing_on[0] = False
                landed += await write(runtime, ["after-0", "after-1"])
                expected = early[3:] + landed
                assert await late.until(len(expected)) == expected
                await asyncio.sleep(0.2)
                assert late.ids == expected
            assert await first.until(len(landed)) == landed
    assert counter.catch_up >= 2


async def test_a_bad_last_event_id_is_a_clean_400(client: httpx.AsyncClient) -> None:
    cases = ["²", "1" * 30, str(2**63), "-1", "1.5", " 7", "0x10", "٣"]
    for value in cases:
        by_header = await client.get(URL, headers={"Last-Event-ID": value.encode()})
        by_query = await client.get(URL, params={"lastEventId": value})
        for response in (by_header, by_query):
            assert response.status_code == 400, value
            assert set(response.json()) == {"message"} and "Last-Event-ID" in response.json()["message"]


async def test_the_largest_sequence_number_is_a_valid_last_event_id(runtime: Runtime, aws_state: FakeAws) -> None:
    async with served(runtime) as http:
        async with following(http, last_event_id=2**63 - 1) as follower:
            await write(runtime, ["beyond"])
            await asyncio.sleep(0.3)
            assert follower.ids == []


async def test_bad_filters_are_400s_before_anything_streams(client: httpx.AsyncClient) -> None:
    bad_image = await client.get(URL, params={"imageId": "1-bad"})
    bad_region = await client.get(URL, params={"region": "mars-1"})
    assert bad_image.status_code == bad_region.status_code == 400
    assert bad_image.json() == {"message": "Bad Request: '1-bad' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"}
    assert bad_region.json() == {"message": "Bad Request: invalid or unsupported region 'mars-1'"}


async def test_other_methods_are_answered_by_the_router(client: httpx.AsyncClient) -> None:
    response = await client.post(URL)
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert response.json() == {"message": "Method Not Allowed"}


@pytest.mark.slow
async def test_beyond_the_client_limit_a_stream_is_refused_with_503_and_retry_after(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    async with served(runtime, sse_max_clients=2) as http:
        async with following(http), following(http):
            refused = await http.get(URL)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            assert "limit of 2 change streams" in refused.json()["message"] and set(refused.json()) == {"message"}
        # The two left: room again.
        async with following(http) as again:
            assert await write(runtime, ["room"]) == await again.until(1)


@pytest.mark.slow
async def test_an_idle_stream_gets_heartbeats(runtime: Runtime, aws_state: FakeAws) -> None:
    async with served(runtime, sse_heartbeat_seconds=1.0) as http:
        async with following(http, imageId="quiet") as follower:
            await write(runtime, ["noisy"])
            # A heartbeat comes a second after the last line; the tailer (0.05 s) has read "noisy" long before.
            await follower.wait_for(lambda: ": keepalive" in follower.comments)
    assert follower.comments.count(": keepalive") >= 1 and follower.ids == []


@pytest.mark.slow
async def test_the_tailer_reads_once_per_interval_however_many_clients_follow(
    runtime: Runtime, aws_state: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = QueryCounter(monkeypatch)
    async with served(runtime) as http, contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(following(http))
        counter.tailer = 0
        await asyncio.sleep(1.0)
        one_client = counter.tailer
        for _ in range(19):
            await stack.enter_async_context(following(http))
        counter.tailer = 0
        await asyncio.sleep(1.0)
        twenty_clients = counter.tailer
    # 0.05 s apart: about 20 a second, whether one client follows or twenty (each client used to poll itself).
    assert 5 <= one_client <= 25 and 5 <= twenty_clients <= 25
    assert counter.catch_up == 0


@pytest.mark.slow
async def test_a_client_moving_to_another_replica_misses_nothing_and_sees_nothing_twice(
    settings: Settings, aws_state: FakeAws
) -> None:
    tuned = dataclasses.replace(settings, sse_poll_seconds=0.05)
    first, second = (Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws()) for _ in range(2))
    try:
        async with (
            serving(create_app(tuned, runtime=first)) as base_a,
            serving(create_app(tuned, runtime=second)) as base_b,
            httpx.AsyncClient(base_url=base_a, timeout=20) as replica_a,
            httpx.AsyncClient(base_url=base_b, timeout=20) as replica_b,
        ):
            async with following(replica_b):
                pass  # replica B's tailer starts now, before anything is written
            async with following(replica_a) as on_a:
                seqs = await write(first, [f"moving-{index}" for index in range(6)])
                received = await on_a.until(3)
            last = received[2]
            async with following(replica_b, last_event_id=last) as on_b:
                seqs += await write(second, ["moving-0"], step=1)
                assert await on_b.until(len(seqs) - 3) == seqs[3:]
                await asyncio.sleep(0.2)
                assert on_b.ids == seqs[3:]
    finally:
        await first.close()
        await second.close()


@pytest.mark.slow
async def test_a_failing_read_of_the_feed_is_retried_and_loses_nothing(
    runtime: Runtime, aws_state: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, backoff_initial_seconds=0.05)
    original = queries.revisions_after
    failures = 0

    async def flaky(*args: Any, **kwargs: Any) -> list[queries.Revision]:
        nonlocal failures
        if failing and kwargs.get("upto") is None:
            failures += 1
            raise ConnectionResetError("the database went away")
        return await original(*args, **kwargs)

    failing = False
    monkeypatch.setattr(queries, "revisions_after", flaky)
    async with served(runtime, sse_heartbeat_seconds=1.0) as http, following(http) as follower:
        failing = True
        seqs = await write(runtime, ["during-0", "during-1"])
        # Until the tailer has failed twice and a heartbeat has come since (a second after the opening line).
        await follower.wait_for(lambda: failures >= 2 and ": keepalive" in follower.comments)
        # The database is away: nothing arrives, but the stream stays up (heartbeats go on).
        assert follower.ids == [] and not follower.ended and ": keepalive" in follower.comments
        failing = False
        seqs += await write(runtime, ["after-0"])
        assert await follower.until(3) == seqs
    assert failures >= 2


async def test_a_change_replayed_after_the_signing_window_turned_is_signed_again(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    from service.api.tailer import current, render
    from service.presign import UrlSigner

    now = [6000.0]
    runtime.signer = UrlSigner(runtime.aws, expires_seconds=3600, reuse_seconds=600, clock=lambda: now[0])
    [seq] = await write(runtime, ["signed"])
    image = await runtime.cache.read(region=REGION, image_id="signed")
    assert image is not None
    event = await render(runtime, seq=seq, image=image)
    assert event.window == 10 and b"Signature=" in event.data
    assert await current(runtime, event) is event.data
    now[0] += 600
    replayed = await current(runtime, event)
    assert event.window == 11 and replayed == event.data and b"Signature=" in replayed


def raw_stream(port: int, *, path: str = URL) -> socket.socket:
    """A client that asks for the stream and then reads nothing: its receive window stays small and full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    sock.settimeout(10)
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


@pytest.mark.slow
async def test_a_slow_client_is_dropped_with_its_position_intact_and_holds_up_no_one(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, sse_poll_seconds=0.05, sse_client_backlog=100)
    app = create_app(runtime.settings, runtime=runtime)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        port = int(base.rsplit(":", 1)[1])
        async with following(http) as quick:
            slow = await asyncio.to_thread(raw_stream, port)
            try:
                await asyncio.sleep(0.2)
                # 12 MB: more than the slow client's socket buffers (at most 4 MB on Linux) and backlog hold.
                written: list[int] = []
                for batch in range(3):
                    image_ids = [f"burst-{batch}-{index}" for index in range(100)]
                    written += await write(runtime, image_ids, padding=40_000)
                assert await quick.until(len(written), within=30) == written
                stream = stream_route(app)
                assert stream.watchers.dropped_slow == 1
                received = await asyncio.to_thread(read_all, slow)
            finally:
                slow.close()
        text_received = received.decode()
        assert ": too far behind; reconnect with Last-Event-ID" in text_received
        # Every `id:` line but the opening block's (where the stream started, not an event).
        ids = [int(line[4:]) for line in text_received.split("\n") if line.startswith("id: ")][1:]
        # Whole events only, in order, and a prefix of what was written: resuming from the last one misses nothing.
        assert ids == written[: len(ids)] and len(ids) < len(written)
        async with following(http, last_event_id=ids[-1]) as resumed:
            assert await resumed.until(len(written) - len(ids), within=30) == written[len(ids) :]


async def test_a_change_that_cannot_be_written_fails_its_request_as_a_failed_send_did(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    """Changes are written by writers of their own, not by the request's task: what one raises is raised where the
    request is answered (uvicorn logs it and closes the connection), and the stream leaves nothing behind."""
    app = create_app(runtime.settings, runtime=runtime)
    stream = stream_route(app)
    opened = asyncio.Event()

    async def send(message: Message) -> None:
        data = message.get("body", b"")
        if data.startswith(b"retry:"):
            opened.set()
        elif data.startswith(b"id: "):
            raise RuntimeError("the connection broke")

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    scope = {"type": "http", "method": "GET", "path": URL, "query_string": b"", "headers": []}
    request = asyncio.create_task(app(scope, receive, send))
    await opened.wait()
    assert len(stream.watchers) == 1  # handed over: its request only waits for the client to leave
    await write(runtime, ["unwritable"])
    with pytest.raises(RuntimeError, match="the connection broke"):
        await asyncio.wait_for(request, timeout=10)
    assert (len(stream.watchers), stream.watchers.admitted, runtime.metrics.stream_clients) == (0, 0, 0)


def stream_route(app: Any) -> ChangeStream:
    # The stack is FastDescribe -> StreamFront -> FastList -> Starlette.
    front = app.app.app
    assert isinstance(front, StreamFront)
    return front.route


# On PostgreSQL a transaction that took a sequence number may commit after one that took a later number.
# This trigger makes that certain: a revision of a `slow-` image waits before its transaction commits.
SLOW_COMMIT = (
    "CREATE OR REPLACE FUNCTION statuscache_test_slow_commit() RETURNS trigger AS $$ "
    "BEGIN IF NEW.image_id LIKE 'slow-%' THEN PERFORM pg_sleep(0.3); END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER statuscache_test_slow_commit AFTER INSERT ON revisions "
    "FOR EACH ROW EXECUTE FUNCTION statuscache_test_slow_commit()",
)
NO_SLOW_COMMIT = (
    "DROP TRIGGER IF EXISTS statuscache_test_slow_commit ON revisions",
    "DROP FUNCTION IF EXISTS statuscache_test_slow_commit()",
)


async def execute(runtime: Runtime, statements: tuple[str, ...]) -> None:
    async with runtime.engine.begin() as connection:
        for statement in statements:
            await connection.execute(text(statement))


@pytest.mark.slow
async def test_racing_writers_never_make_the_stream_skip_a_revision(settings: Settings, aws_state: FakeAws) -> None:
    tuned = dataclasses.replace(settings, sse_poll_seconds=0.05)
    runtimes = [Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws()) for _ in range(4)]
    streamer, writers = runtimes[0], runtimes[1:]
    postgres = not tuned.is_sqlite
    try:
        if postgres:
            await execute(streamer, SLOW_COMMIT)
        async with (
            serving(create_app(tuned, runtime=streamer)) as base,
            httpx.AsyncClient(base_url=base, timeout=20) as http,
            following(http, last_event_id=0) as follower,
        ):

            async def keep_writing(writer: Runtime, index: int) -> list[int]:
                # One writer commits slowly (on PostgreSQL); the others commit fast around it.
                kind = "slow" if index == 0 else "fast"
                seqs = []
                for step in range(6):
                    seqs += await write(writer, [f"{kind}-{index}-{step}"])
                    await asyncio.sleep(0.02)
                return seqs

            written = await asyncio.gather(*(keep_writing(writer, index) for index, writer in enumerate(writers)))
            committed = sorted(seq for seqs in written for seq in seqs)
            with contextlib.suppress(TimeoutError):
                await follower.until(len(committed), within=3)
        assert follower.ids == committed, f"missing {sorted(set(committed) - set(follower.ids))}"
    finally:
        if postgres:
            await execute(streamer, NO_SLOW_COMMIT)
        for runtime in runtimes:
            await runtime.close()
