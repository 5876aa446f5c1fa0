"""HTTP/1.1 connections with the bounds uvicorn's httptools protocol lacks: request-line size, header size,
and the time a client may take to send its headers.

uvicorn reads a request line and headers of any size, for as long as a client cares to take: connections
trickling one header byte at a time stay open for ever and hold their memory. `bounded_protocol(...)`
answers 414 past the request-line limit and 431 past the header limit (all header lines together, or more
than MAX_HEADER_COUNT of them), as `{"message": ...}`, and closes; `sweep_slow_headers` (run by the
server) closes, with 408, every connection whose request has not finished its headers within the
timeout of its first byte, or of connecting. A request costs one clock read for this, no timer.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
import weakref
from collections.abc import Iterable
from typing import Any

import httptools
import orjson
from starlette.types import Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.api.instrument import Instrument

log = logging.getLogger(__name__)

MAX_HEADER_COUNT = 100
STATUS_TEXT = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def refusal(status: int, message: str) -> bytes:
    body = orjson.dumps({"message": message})
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (status, STATUS_TEXT[status], len(body), body)
    )


def answered_cycle() -> RequestResponseCycle:
    """What stands for the request-response cycle of a request the connection answered itself: one complete
    cycle, shared (uvicorn's callbacks that follow, on_body, on_message_complete, connection_lost, shutdown, see a
    complete response and have nothing to do; setting its event wakes nobody)."""
    cycle = RequestResponseCycle(
        scope={},  # type: ignore[typeddict-item]
        transport=None,  # type: ignore[arg-type]
        flow=None,  # type: ignore[arg-type]
        logger=log, access_logger=log, access_log=False, default_headers=[], message_event=asyncio.Event(),
        expect_100_continue=False, keep_alive=True, on_response=lambda: None,
    )  # fmt: skip
    cycle.response_started = cycle.response_complete = True
    return cycle


ANSWERED = answered_cycle()


class Unsent:
    """The connections of one event loop holding answers not yet written, written together once the loop has read
    every connection that was ready.

    A connection that wrote each answer the moment it decided it (inside its `data_received`) woke the client for
    every answer, one at a time, between reads: on this machine's loopback that wake-up cost a request about 3 us
    of system time, against 1 for a server writing after it has read everything ready (as uvicorn's ASGI cycle
    does, its tasks running after the reads). With the writes together, one wake-up serves many.
    """

    __slots__ = ("_loop", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: list[BoundedHttpToolsProtocol] = []

    def add(self, connection: BoundedHttpToolsProtocol) -> None:
        if not self._waiting:
            # Before any callback scheduled after it: the ASGI task of a request pipelined behind this answer
            # (its first step is scheduled when it is made) writes after it.
            self._loop.call_soon(self.write)
        self._waiting.append(connection)

    def write(self) -> None:
        waiting, self._waiting = self._waiting, []
        for connection in waiting:
            connection.write_unsent()


_UNSENT: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Unsent] = weakref.WeakKeyDictionary()


def unsent_for(loop: asyncio.AbstractEventLoop) -> Unsent:
    unsent = _UNSENT.get(loop)
    if unsent is None:
        unsent = _UNSENT[loop] = Unsent(loop)
    return unsent


def answering_app(app: object) -> Instrument | None:
    """The service's outermost layer, if it is what uvicorn calls (through its proxy-headers middleware at most:
    what that changes, the client's address and scheme, no answer from memory reads)."""
    if isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    return app if isinstance(app, Instrument) and app.shortcut is not None else None


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing oversized request lines and headers (see the module docstring), and
    writing the answers the app gives from memory itself.

    A request the app answers from memory (Instrument.answer_now: a cached describe, a remembered list page, with
    authentication and CORS when configured) is answered here, when its headers are complete, in one write: no
    request-response cycle, no ASGI task, no `send` coroutines, no second write for the body. The write waits until
    the loop has read every ready connection (Unsent), unless the answer ends the connection. Its scope is made as
    uvicorn makes it, and the bytes are those uvicorn's own `send` would write for that answer (its status line,
    its default headers, then the answer's; `connection: close` when the request ends the connection), which
    tests/test_answers_in_connection.py holds against uvicorn answering through ASGI. Everything else, and any
    request while an answer before it is still being written (pipelined behind it), goes to uvicorn's ASGI cycle
    as usual.
    """

    # Slots, not instance attributes: uvicorn's protocol has 27 of its own, and more took its instances past
    # the 30 a dict can share keys for, so every connection carried a dict of its own (1.6 KB instead of 0.3).
    __slots__ = ("_answers", "_header_bytes", "_refused", "_unsent", "_unsent_queue", "_url_bytes", "headers_since")

    max_request_line_bytes = 8192
    max_header_bytes = 32768
    answer_in_connection = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answers = answering_app(self.app) if self.answer_in_connection else None
        # When the request now being read began (loop time), until its headers are complete; None otherwise.
        self.headers_since: float | None = None
        self._url_bytes = 0
        self._header_bytes = 0
        self._refused = False
        # Answers decided but not yet written (see Unsent), in the order of their requests; the loop's queue.
        self._unsent: list[bytes] = []
        self._unsent_queue = unsent_for(self.loop)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.headers_since = self.loop.time()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.headers_since = self.loop.time()
        self._url_bytes = self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_request_line_bytes:
            self.refuse(414, f"Bad Request: the request line is longer than {self.max_request_line_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        headers = self.headers
        if self._header_bytes > self.max_header_bytes or len(headers) >= MAX_HEADER_COUNT:
            self.refuse(
                431,
                f"Bad Request: the request's headers are longer than {self.max_header_bytes} bytes "
                f"or more than {MAX_HEADER_COUNT}",
            )
        # uvicorn's own on_header, inline: this runs for every header of every request.
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_since = None
        answers = self._answers
        cycle = self.cycle
        if (
            answers is None
            or (cycle is not None and not cycle.response_complete)  # an answer before it is still being written
            or self.flow.write_paused
            or self.limit_concurrency is not None
            or self.access_log
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        # The scope made whole as uvicorn's on_headers_complete makes it, before it would make a cycle for it.
        scope: Scope = self.scope  # type: ignore[assignment]
        http_version = self.parser.get_http_version()
        scope["method"] = self.parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""
        now = answers.answer_now(scope)
        if now is None:
            super().on_headers_complete()  # the ASGI cycle, as for any request (it makes the same scope again)
            return
        (status, headers, body), started = now
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        self.cycle = ANSWERED
        self._write_answer(status, headers, body, keep_alive=keep_alive)
        answers.answered(scope, status, started)
        self.on_response_complete()

    def _write_answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, keep_alive: bool) -> None:
        """What RequestResponseCycle.send writes for a whole answer, written at once. The answer's headers are the
        app's own (lower-case names, values it checked: no `connection` header among them)."""
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        chunked = status not in (204, 304)
        for name, value in headers:
            if name == b"content-length":
                chunked = False
            content += (name, b": ", value, b"\r\n")
        if not keep_alive:
            content.append(b"connection: close\r\n")
        if chunked:
            content.append(b"transfer-encoding: chunked\r\n\r\n")
            content += (b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n") if body else (b"0\r\n\r\n",)
        else:
            content += (b"\r\n", body)
        if keep_alive:
            # Written with the loop's other answers once it has read every ready connection (Unsent).
            if not self._unsent:
                self._unsent_queue.add(self)
            self._unsent.append(b"".join(content))
        elif not self.transport.is_closing():
            # The last answer on this connection: written now and the connection closed, as uvicorn does.
            self.write_unsent()
            self.transport.write(b"".join(content))
            self.transport.close()

    def write_unsent(self) -> None:
        """Write the answers decided and not yet written. Everything else this connection writes (a refusal, a 400,
        a close) calls this first, so that answers leave in the order of their requests."""
        unsent = self._unsent
        if unsent:
            if not self.transport.is_closing():
                self.transport.write(unsent[0] if len(unsent) == 1 else b"".join(unsent))
            unsent.clear()

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` and close; raising stops the parser (uvicorn then answers nothing more: see below)."""
        self._refused = True
        self.headers_since = None
        self.write_unsent()
        if not self.transport.is_closing():
            self.transport.write(refusal(status, message))
            self.transport.close()
        raise ValueError(message)

    def send_400_response(self, msg: str) -> None:
        # The parser stopped because we refused the request: that answer is already on its way.
        if not self._refused:
            self.write_unsent()
            super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        self.write_unsent()
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        self.write_unsent()
        super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        self.write_unsent()
        super().timeout_keep_alive_handler()

    def timed_out(self) -> None:
        self.headers_since = None
        self.write_unsent()
        if not self.transport.is_closing():
            self.transport.write(refusal(408, "Bad Request: the request's headers did not arrive in time"))
            self.transport.close()


def bounded_protocol(
    *, max_request_line_bytes: int, max_header_bytes: int, answer_in_connection: bool = True
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits (`answer_in_connection=False`: every
    request through uvicorn's ASGI cycle, as tests compare)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_request_line_bytes": max_request_line_bytes,
            "max_header_bytes": max_header_bytes,
            "answer_in_connection": answer_in_connection,
        },
    )


def close_slow_headers(connections: Iterable[object], *, now: float, timeout: float) -> int:
    """Close the connections whose headers are overdue; how many."""
    closed = 0
    for connection in list(connections):
        if isinstance(connection, BoundedHttpToolsProtocol):
            since = connection.headers_since
            if since is not None and now - since > timeout:
                connection.timed_out()
                closed += 1
    return closed


async def sweep_slow_headers(connections: set[Any], *, header_seconds: float, stop: asyncio.Event) -> None:
    """Every so often (a quarter of the timeout, at most a second), close what close_slow_headers finds."""
    loop = asyncio.get_running_loop()
    interval = min(1.0, header_seconds / 4)
    while not stop.is_set():
        try:
            async with asyncio.timeout(interval):
                await stop.wait()
        except TimeoutError:
            pass
        closed = close_slow_headers(connections, now=loop.time(), timeout=header_seconds)
        if closed:
            log.info("closed %d connections that had not sent their headers within %gs", closed, header_seconds)
