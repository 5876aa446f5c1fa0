"""Bounded connections, through the server `serve` runs: oversized request lines and headers are refused
with a 4xx (not read for ever), and connections that never finish their headers are closed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.api.app import create_app
from service.api.connections import BoundedHttpToolsProtocol, bounded_protocol, close_slow_headers
from service.runner import DrainingServer, uvicorn_config
from service.runtime import Runtime
from tests.conftest import free_port

S = TypeVar("S", bound=uvicorn.Server)


@asynccontextmanager
async def running(runtime: Runtime, **overrides: float) -> AsyncIterator[DrainingServer]:
    settings = dataclasses.replace(
        runtime.settings, host="127.0.0.1", port=free_port(), log_level="WARNING", **overrides
    )
    app = create_app(settings, runtime=runtime)
    async with started(DrainingServer(uvicorn_config(app, settings), app.state)) as server:
        yield server


@asynccontextmanager
async def started(server: S) -> AsyncIterator[S]:
    """`server` serving until the block ends."""
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def exchange(port: int, raw: bytes, *, wait: float = 5) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=wait)
    finally:
        writer.close()


def status_and_body(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.asyncio
async def test_oversized_headers_are_431_and_long_request_lines_414(runtime: Runtime) -> None:
    async with running(runtime) as server:
        port = server.config.port
        big = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        many = await exchange(
            port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(150)) + b"\r\n"
        )
        long_line = await exchange(port, b"GET /v3/images/custom/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_and_body(big)[0] == status_and_body(many)[0] == 431
    assert status_and_body(big)[1]["message"].startswith("Bad Request: the request's headers are longer than 32768")
    assert status_and_body(long_line) == (
        414, {"message": "Bad Request: the request line is longer than 8192 bytes"},
    )  # fmt: skip


@pytest.mark.asyncio
async def test_connections_that_never_finish_their_headers_are_closed(runtime: Runtime) -> None:
    async with running(runtime, header_timeout_seconds=0.5) as server:
        port = server.config.port
        started = asyncio.get_running_loop().time()
        # Many slow clients: half send part of a request, half say nothing at all after connecting.
        answers = await asyncio.gather(
            *(exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " if n % 2 else b"") for n in range(40))
        )
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 4
    assert {status_and_body(answer)[0] for answer in answers} == {408}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_kept_alive_connection_outlives_the_header_timeout_between_requests(runtime: Runtime) -> None:
    async with running(runtime, header_timeout_seconds=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.config.port)
        try:
            answers = []
            for _ in range(2):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                answers.append(await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), timeout=5))
                await asyncio.sleep(1.0)  # idle (not mid-headers) for twice the header timeout
        finally:
            writer.close()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)


def test_only_requests_mid_headers_past_the_timeout_are_swept() -> None:
    closed: list[str] = []

    class Connection(BoundedHttpToolsProtocol):
        def __init__(self, name: str, since: float | None) -> None:  # no transport: only what the sweep reads
            self.name, self.headers_since = name, since

        def timed_out(self) -> None:
            closed.append(self.name)

    connections = {Connection("overdue", 0.0), Connection("reading", 9.5), Connection("answered", None), object()}
    assert close_slow_headers(connections, now=10.0, timeout=1.0) == 1
    assert closed == ["overdue"]


async def nothing(scope: Scope, receive: Receive, send: Send) -> None:
    pass


@pytest.mark.asyncio
async def test_a_bounded_connection_holds_no_more_than_uvicorns_own() -> None:
    """Its bounds live in slots: four more attributes took uvicorn's 27 past the 30 a dict can share keys for, and
    every connection carried a dict of its own (1.6 KB instead of 0.3)."""
    config = uvicorn.Config(nothing, lifespan="off")
    config.load()
    state = ServerState()
    plain = HttpToolsProtocol(config=config, server_state=state, app_state={})
    bounded = bounded_protocol(max_request_line_bytes=8192, max_header_bytes=32768)(
        config=config, server_state=state, app_state={}
    )
    assert sys.getsizeof(vars(bounded)) == sys.getsizeof(vars(plain))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setting", "environment", "seen"),
    [
        ("", "", "127.0.0.1"),  # no proxy named: X-Forwarded-For is not believed (and no middleware reads it)
        ("127.0.0.1", "", "203.0.113.7"),
        ("", "127.0.0.1", "203.0.113.7"),  # uvicorn's own FORWARDED_ALLOW_IPS
        ("10.0.0.0/8", "", "127.0.0.1"),  # a proxy named, but the request did not come from it
    ],
)
async def test_forwarded_headers_are_believed_only_from_the_proxies_named(
    monkeypatch: pytest.MonkeyPatch, setting: str, environment: str, seen: str
) -> None:
    from service.settings import Settings

    if environment:
        monkeypatch.setenv("FORWARDED_ALLOW_IPS", environment)
    else:
        monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)

    async def whoami(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "http"
        client = scope["client"]
        assert isinstance(client, tuple)
        body = str(client[0]).encode()
        length = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": length})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    settings = Settings(host="127.0.0.1", port=free_port(), log_level="WARNING", forwarded_allow_ips=setting)
    config = uvicorn_config(whoami, settings)
    config.lifespan = "off"
    async with started(uvicorn.Server(config)):
        answer = await exchange(
            settings.port,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
        )
    assert answer.partition(b"\r\n\r\n")[2] == seen.encode()
