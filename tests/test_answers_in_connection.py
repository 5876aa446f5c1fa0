"""Answers from memory written by the connection itself (service.api.connections): the same bytes uvicorn writes
when the app answers them through ASGI, for every shape of request that can reach them, and no ASGI task."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.api import connections
from service.api.app import StatusCacheApp, create_app
from service.api.connections import bounded_protocol
from service.demo.fakeaws import FakeAws
from service.runner import DrainingServer, uvicorn_config
from service.runtime import Runtime
from service.settings import Settings
from tests.conftest import REGION, free_port
from tests.test_connections import started

pytestmark = pytest.mark.asyncio

TOKEN = "sct_conn_" + "c" * 40
DASHBOARD = "https://dashboard.example.com"
DESCRIBE = f"/v3/images/custom/cached-image?region={REGION}"
LIST = f"/v3/images/custom?imageStatus=AVAILABLE&region={REGION}"
# What differs between two answers by nature: the clock's second (Date, Age), and a request id made for it.
PER_MOMENT = re.compile(rb"^(date|age|x-request-id): (?!same-id\r).*$", re.MULTILINE)


@dataclasses.dataclass
class Pair:
    """One app served twice: answering from memory in the connection, and everything through ASGI."""

    app: StatusCacheApp
    in_connection: int
    through_asgi: int


@asynccontextmanager
async def served(app: StatusCacheApp, settings: Settings, *, answer_in_connection: bool) -> AsyncIterator[int]:
    config = uvicorn_config(app, dataclasses.replace(settings, host="127.0.0.1", port=free_port()))
    config.http = bounded_protocol(
        max_request_line_bytes=settings.max_request_line_bytes, max_header_bytes=settings.max_header_bytes,
        answer_in_connection=answer_in_connection,
    )  # fmt: skip
    async with started(DrainingServer(config, app.state, tokens=app.tokens)) as server:
        yield server.config.port


@asynccontextmanager
async def pair(runtime: Runtime, **settings: Any) -> AsyncIterator[Pair]:
    # Records and pages kept for the whole test, whatever the database (PostgreSQL cannot say it is unchanged).
    configured = dataclasses.replace(runtime.settings, log_level="WARNING", read_cache_seconds=3600.0, **settings)
    runtime.settings = runtime.lookup._settings = configured
    # One signing window for the whole test: a window turning over between the two servers' answers would change
    # the signed URL and the ETag of one of them.
    frozen = runtime.signer._clock()
    runtime.signer._clock = lambda: frozen
    app = create_app(configured, runtime=runtime)
    async with AsyncExitStack() as stack:
        fast = await stack.enter_async_context(served(app, configured, answer_in_connection=True))
        slow = await stack.enter_async_context(served(app, configured, answer_in_connection=False))
        yield Pair(app, fast, slow)


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool) -> bytes:
    """One whole response off a connection: its head, and its body by its content-length (or chunks)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if head_only:
        return head
    length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head)
    if length is not None:
        return head + await reader.readexactly(int(length.group(1)))
    if b"\r\ntransfer-encoding: chunked\r\n" in head:
        return head + await reader.readuntil(b"0\r\n\r\n")
    return head


async def exchange(port: int, raw: bytes, *, answers: int = 1) -> tuple[list[bytes], bool]:
    """`raw` sent on a new connection: the answers read back, and whether the server then closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        head_only = raw.startswith(b"HEAD ")
        got = [await asyncio.wait_for(read_answer(reader, head_only=head_only), timeout=5) for _ in range(answers)]
        try:
            closed = await asyncio.wait_for(reader.read(1), timeout=0.3) == b""
        except TimeoutError:
            closed = False
        return got, closed
    finally:
        writer.close()


def request(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: statuscache", "X-Request-ID: same-id", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextmanager
def asgi_tasks() -> Iterator[list[str]]:
    """The paths of the requests uvicorn started an ASGI task for, while in the block."""
    started_for: list[str] = []
    original = HttpToolsProtocol._start_asgi_task

    def counted(self: HttpToolsProtocol, cycle: Any, app: Any) -> None:
        started_for.append(cycle.scope["path"])
        original(self, cycle, app)

    HttpToolsProtocol._start_asgi_task = counted  # type: ignore[method-assign]
    try:
        yield started_for
    finally:
        HttpToolsProtocol._start_asgi_task = original  # type: ignore[method-assign]


async def both(served_pair: Pair, raw: bytes, *, answers: int = 1) -> tuple[list[bytes], bool]:
    """`raw` asked of each server: the same answers (but for Date and Age) and the same closing, or fail."""
    fast, fast_closed = await exchange(served_pair.in_connection, raw, answers=answers)
    slow, slow_closed = await exchange(served_pair.through_asgi, raw, answers=answers)
    assert [PER_MOMENT.sub(rb"\1: *", answer) for answer in fast] == [
        PER_MOMENT.sub(rb"\1: *", answer) for answer in slow
    ]
    assert fast_closed == slow_closed
    return fast, fast_closed


async def cached(runtime: Runtime, aws: FakeAws, served_pair: Pair, *headers: str) -> tuple[str, str]:
    """An image described until it is answered from memory, and an available one listed: their ETags."""
    aws.create_image_stack(region=REGION, image_id="cached-image")
    aws.create_ami(region=REGION, image_id="listed-image")
    for path in ("/v3/images/custom/listed-image?region=" + REGION, DESCRIBE, LIST):
        for _ in range(2):
            await exchange(served_pair.through_asgi, request(path, *headers))
    (answer,), _ = await exchange(served_pair.in_connection, request(DESCRIBE, *headers))
    assert b"\r\nx-cache: HIT\r\n" in answer
    (page,), _ = await exchange(served_pair.in_connection, request(LIST, *headers))

    def etag(raw: bytes) -> str:
        found = re.search(rb"\r\netag: (.+?)\r\n", raw)
        assert found is not None
        return found.group(1).decode()

    return etag(answer), etag(page)


async def test_cached_answers_are_the_bytes_uvicorn_writes_and_start_no_asgi_task(
    runtime: Runtime, aws_state: FakeAws, caplog: pytest.LogCaptureFixture
) -> None:
    async with pair(runtime) as served_pair:
        describe_etag, list_etag = await cached(runtime, aws_state, served_pair)
        with asgi_tasks() as tasked:
            plain, closed = await both(served_pair, request(DESCRIBE))
            revalidated, _ = await both(served_pair, request(DESCRIBE, f"If-None-Match: {describe_etag}"))
            page, _ = await both(served_pair, request(LIST))
            page_304, _ = await both(served_pair, request(LIST, f"If-None-Match: {list_etag}"))
            gzipped, _ = await both(served_pair, request(LIST, "Accept-Encoding: gzip"))
            # The connection's end as the request asks it: Connection: close, HTTP/1.0.
            _, closed_on_request = await both(served_pair, request(DESCRIBE, "Connection: close"))
            _, closed_10 = await both(served_pair, request(DESCRIBE, version="1.0"))
            _, kept_10 = await both(served_pair, request(DESCRIBE, "Connection: keep-alive", version="1.0"))
            # Pipelined: in order; what waits behind an answer through ASGI (the list, behind /healthz) goes
            # through ASGI too.
            pipelined, _ = await both(
                served_pair, request(DESCRIBE) + request("/healthz") + request(LIST, "If-None-Match: nope"), answers=3
            )
            back_to_back, _ = await both(served_pair, request(DESCRIBE) + request(DESCRIBE, "X-Other: 1"), answers=2)
            # What is not in memory goes through ASGI on both: a miss, a bad id, a moment in the past, a HEAD.
            await both(served_pair, request(f"/v3/images/custom/never-seen?region={REGION}"))
            await both(served_pair, request("/v3/images/custom/bad%20id"))
            await both(served_pair, request(DESCRIBE + "&at=2000-01-01T00:00:00Z"))
            await both(served_pair, b"HEAD " + request(DESCRIBE)[4:])
            # A client's own request id is kept only when it looks like one.
            await both(served_pair, request(DESCRIBE).replace(b"same-id", b"not an id"), answers=1)

    # Connections that were answered in the connection then closed by their clients or by the server: nothing for
    # uvicorn's callbacks to trip on (connection_lost once found no event on the cycle that stands for theirs).
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert plain[0].startswith(b"HTTP/1.1 200 OK\r\n") and not closed
    assert b"\r\nx-request-id: same-id\r\n" in plain[0]
    assert revalidated[0].startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert page[0].startswith(b"HTTP/1.1 200 OK\r\n") and page_304[0].startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert gzipped[0].startswith(b"HTTP/1.1 200 OK\r\n")  # a page this small is not compressed (test_compression)
    # uvicorn ends every HTTP/1.0 connection after its answer, keep-alive asked or not: so does the connection.
    assert closed_on_request and closed_10 and kept_10
    assert [answer.split(b"\r\n")[0] for answer in [*pipelined, *back_to_back]] == [b"HTTP/1.1 200 OK"] * 5
    # Every answer from memory above was asked twice, once of each server: only the ASGI server's, and the
    # requests memory cannot answer, started a task.
    fast_paths = {DESCRIBE.partition("?")[0], LIST.partition("?")[0]}
    answered_in_memory = [path for path in tasked if path in fast_paths]
    # 9 describes and 3 lists from memory, asked of the ASGI server only; the pipelined list behind /healthz, the
    # at= and the HEAD, asked of both.
    assert len(answered_in_memory) == 12 + 3 * 2, tasked
    assert tasked.count("/healthz") == 2


async def test_with_tokens_and_cors_the_answers_are_the_same_and_refusals_go_through_asgi(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"dashboard {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    bearer = f"Authorization: Bearer {TOKEN}"
    async with pair(runtime, api_tokens_file=str(tokens), cors_origins=(DASHBOARD,)) as served_pair:
        await cached(runtime, aws_state, served_pair, bearer)
        with asgi_tasks() as tasked:
            admitted, _ = await both(served_pair, request(DESCRIBE, bearer))
            listed_origin, _ = await both(served_pair, request(DESCRIBE, bearer, f"Origin: {DASHBOARD}"))
            other_origin, _ = await both(served_pair, request(LIST, bearer, "Origin: https://elsewhere.example"))
            refused, _ = await both(served_pair, request(DESCRIBE, "Authorization: Bearer sct_wrong"))
            missing, _ = await both(served_pair, request(DESCRIBE, f"Origin: {DASHBOARD}"))
            preflight, _ = await both(served_pair, (
                f"OPTIONS {DESCRIBE} HTTP/1.1\r\nHost: statuscache\r\nOrigin: {DASHBOARD}\r\n"
                "Access-Control-Request-Method: GET\r\n\r\n"
            ).encode())  # fmt: skip

    assert admitted[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\naccess-control-allow-origin: {DASHBOARD}\r\n".encode() in listed_origin[0]
    assert b"\r\nvary: Origin\r\n" in other_origin[0] and b"access-control-allow-origin" not in other_origin[0]
    assert refused[0].startswith(b"HTTP/1.1 401 ") and missing[0].startswith(b"HTTP/1.1 401 ")
    assert preflight[0].startswith(b"HTTP/1.1 204 ")
    path = DESCRIBE.partition("?")[0]
    # The two admitted describes went through ASGI on one server only; the refusals and the preflight on both.
    assert tasked.count(path) == 2 + 3 * 2


async def test_middleware_between_means_every_request_goes_through_asgi(runtime: Runtime) -> None:
    from starlette.middleware import Middleware

    from tests.test_instrument import PassesThrough

    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(PassesThrough)])
    assert app.shortcut is None and connections.answering_app(app) is None
    assert connections.answering_app(create_app(runtime.settings, runtime=runtime)) is not None


async def test_answers_pipelined_before_a_refusal_or_a_close_are_written_first(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    """An answer from memory waits for the loop (connections.Unsent); whatever the connection then writes at once (a
    431, a 400, the last answer before a close) goes after it, as the requests came."""
    async with pair(runtime) as served_pair:
        await cached(runtime, aws_state, served_pair)
        port = served_pair.in_connection
        oversized, oversized_closed = await exchange(
            port, request(DESCRIBE) + request(DESCRIBE, "X-Big: " + "x" * 40_000), answers=2
        )
        garbage, garbage_closed = await exchange(port, request(DESCRIBE) + b"NOT HTTP AT ALL\r\n\r\n", answers=2)
        last, last_closed = await exchange(port, request(DESCRIBE) + request(DESCRIBE, "Connection: close"), answers=2)

    assert [answer.split(b"\r\n")[0] for answer in oversized] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 431 Request Header Fields Too Large",
    ]
    assert [answer.split(b"\r\n")[0] for answer in garbage] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
    assert [answer.split(b"\r\n")[0] for answer in last] == [b"HTTP/1.1 200 OK"] * 2
    assert b"\r\nconnection: close\r\n" in last[1] and b"connection: close" not in last[0]
    assert oversized_closed and garbage_closed and last_closed


class Transport:
    """What a connection wrote, write by write, and whether it closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_answers_from_memory_are_written_together_once_the_loop_has_read_every_ready_connection(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    async with pair(runtime) as served_pair:
        await cached(runtime, aws_state, served_pair)
        config = uvicorn_config(
            served_pair.app, dataclasses.replace(runtime.settings, host="127.0.0.1", port=free_port())
        )
        config.load()
        state = ServerState()

        def connected() -> tuple[connections.BoundedHttpToolsProtocol, Transport]:
            connection = config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
            transport = Transport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            return connection, transport

        first, second, stopping = connected(), connected(), connected()
        for connection, _ in (first, second):
            connection.data_received(request(DESCRIBE) + request(DESCRIBE, "X-Other: 1"))
        # Decided, not yet written: the loop may still have other ready connections to read.
        assert first[1].writes == second[1].writes == []
        stopping[0].data_received(request(DESCRIBE))
        # A connection closed by a shutdown writes what it had decided first.
        stopping[0].shutdown()
        await asyncio.sleep(0)

    for _, transport in (first, second):
        # Both answers of each, in one write, once the loop came round.
        (written,) = transport.writes
        assert written.count(b"HTTP/1.1 200 OK\r\n") == 2 and not transport.closed
    (written,) = stopping[1].writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and stopping[1].closed
