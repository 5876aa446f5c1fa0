"""The stream floor's app (bench.stream_floor): a raw ASGI app answering every GET with the change stream's head
and opening block, and holding the connection until its client leaves; nothing else.

Served as `python -m uvicorn bench.stream_floor_app:app`. It imports nothing beyond the standard library, on
purpose: memory a process allocated at start and freed again is reused by its first connections, and would hide
part of what each one costs (a floor importing the benchmark's modules, moto among them, measured 1.8 KB per
client at 1,000 clients and 7.5 KB at 5,000).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# The service's own head and opening block (service.api.changes), byte for byte: the floor sends what it sends.
HEAD = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
OPENING = b"retry: 2000\nid: 0\n: connected\n\n"


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:  # fmt: skip
    """The floor: every GET is an event stream held open until its client leaves; /readyz says it started."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/readyz":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEAD})
    await send({"type": "http.response.body", "body": OPENING, "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
