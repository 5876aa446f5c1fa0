"""A lean change-stream load generator: N idle SSE clients on raw asyncio sockets, in one process.

Run as `python -m bench.sse_clients --port P --count N [--path /v3/image-changes?region=...] [--header 'Name: value'
...]`. It connects
its clients (at most --ramp handshakes at once), then prints one JSON line {"connected": n, "failed": k} and
obeys commands read from stdin, one per line, answering each with one JSON line:

    report <t0>   for every client, the arrival time (time.monotonic, which is system-wide on Linux) and id of
                  the first event it received at or after t0, or null; plus counts of keepalives and ended streams
    close         close every connection and exit

A client parses only what it must: `id:` lines, keepalive comments and the end of the response. Several of
these processes share the clients of one benchmark, so the benchmark measures the server, not itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the benchmark installs it with the service
    uvloop = None  # type: ignore[assignment]


class SseClient(asyncio.Protocol):
    """One connection: sends the request, then notes when each `id:` line arrives."""

    __slots__ = ("arrivals", "connected", "ended", "keepalives", "request", "tail", "transport")

    def __init__(self, request: bytes, connected: asyncio.Future[bool]) -> None:
        self.request = request
        self.connected = connected
        self.transport: asyncio.BaseTransport | None = None
        self.tail = b""
        self.arrivals: list[tuple[float, int]] = []
        self.keepalives = 0
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they write.
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        text = self.tail + data
        lines = text.split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            if line.startswith(b"id: "):
                self.arrivals.append((now, int(line[4:])))
            elif line.startswith(b": keepalive"):
                self.keepalives += 1
            elif line.startswith(b": connected") and not self.connected.done():
                self.connected.set_result(True)
            elif line.startswith(b"HTTP/1.1 ") and not line.startswith(b"HTTP/1.1 200"):
                if not self.connected.done():
                    self.connected.set_result(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if not self.connected.done():
            self.connected.set_result(False)


async def connect_all(
    *, host: str, port: int, path: str, count: int, ramp: int, headers: list[str] | None = None
) -> list[SseClient]:
    loop = asyncio.get_running_loop()
    extra = "".join(f"{header}\r\n" for header in headers or ())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()
    clients: list[SseClient] = []
    gate = asyncio.Semaphore(ramp)

    async def one() -> None:
        async with gate:
            connected: asyncio.Future[bool] = loop.create_future()
            try:
                _, client = await loop.create_connection(lambda: SseClient(request, connected), host, port)
            except OSError:
                return
            if await asyncio.wait_for(connected, timeout=60):
                clients.append(client)

    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    return clients


def report(clients: list[SseClient], since: float) -> dict[str, object]:
    firsts: list[list[float] | None] = []
    for client in clients:
        first = next(((at, seq) for at, seq in client.arrivals if at >= since), None)
        firsts.append([first[0], first[1]] if first else None)
    return {
        "firsts": firsts,
        "keepalives": sum(client.keepalives for client in clients),
        "ended": sum(client.ended for client in clients),
    }


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit (as far as the system allows); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_clients")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--path", default="/v3/image-changes")
    parser.add_argument("--ramp", type=int, default=100, help="handshakes in flight at once")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent with every request")
    args = parser.parse_args(argv)
    raise_fd_limit()
    clients = await connect_all(
        host=args.host, port=args.port, path=args.path, count=args.count, ramp=args.ramp, headers=args.header
    )
    print(json.dumps({"connected": len(clients), "failed": args.count - len(clients)}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        command, _, argument = line.partition(" ")
        if command == "report":
            print(json.dumps(report(clients, float(argument))), flush=True)
        elif command == "close":
            break
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    print(json.dumps({"closed": len(clients)}), flush=True)


if __name__ == "__main__":
    if uvloop is not None:
        uvloop.run(main())
    else:
        asyncio.run(main())
