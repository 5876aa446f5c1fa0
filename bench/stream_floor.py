"""python -m bench.stream_floor: what an idle change-stream client costs the service, against the server's own floor.

The floor is a raw ASGI app on the same uvicorn (httptools, uvloop, no proxy-headers middleware, no access log:
what `serve` runs) that answers the stream's head and opening block and holds the connection until the client
leaves, and nothing else. Both are measured the same way, each a fresh process with the same open-file limit:
RSS after one stream opened and closed, then with N idle clients of bench.sse_clients connected (2,500 per
client process); per client, the difference / N. Rounds alternate which of the two goes first; the per-client
figures are medians. The service is also measured as the issue asks: its CPU while the clients sit idle (over a
heartbeat period and more), and the delivery of a change it writes itself to every client (worst of 3 probes).

    .venv/bin/python -m bench.stream_floor [--clients 5000] [--rounds 2]

The floor's app is bench.stream_floor_app, a module of its own: served, it imports nothing but itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import report, seed, servers, streams
from bench.fake import TimedFakeAws
from bench.report import Row

TARGET_RATIO = 1.25
TARGET_CPU = 5.0
TARGET_DELIVERY_MS = 1000.0
def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_floor(*, log_dir: Path, name: str = "stream-floor") -> servers.Process:
    """The floor on uvicorn as `serve` runs the service: httptools, uvloop, no proxy headers, no access log."""
    return servers.start_asgi(
        "bench.stream_floor_app:app", env={}, log_dir=log_dir, name=name,
        options=["--http", "httptools", "--loop", "uvloop", "--no-proxy-headers"], preexec_fn=streams.raise_fd_limit,
    )  # fmt: skip


def open_one(process: servers.Process) -> None:
    """One stream opened, read up to its opening block, and closed: whatever the first stream builds is built."""
    with httpx.stream("GET", process.base + streams.PATH, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith(": connected"):
                break


@dataclass(frozen=True)
class Held:
    """RSS with no stream client, and with `clients` connected."""

    clients: int
    before_mb: float
    after_mb: float

    @property
    def per_client_kb(self) -> float:
        return (self.after_mb - self.before_mb) * 1000 / self.clients if self.clients else float("nan")


@contextmanager
def holding(process: servers.Process, *, count: int) -> Iterator[tuple[streams.Clients, Held]]:
    """`count` idle clients connected to `process`, and its RSS before and with them."""
    before = process.rss_mb()
    with streams.Clients(port=process.port, count=count) as clients:
        # Connected means each client read its opening block; what the server does right after has settled.
        time.sleep(2.0)
        yield clients, Held(clients.connected, before, process.rss_mb())
    process.check_alive()


@dataclass
class Figures:
    floor: list[Held]
    service: list[Held]
    cpu: list[float]
    local: list[streams.Delivery]


class StreamFloorBench:
    def __init__(self, *, clients: int, rounds: int, workdir: Path, fake: TimedFakeAws) -> None:
        self.clients = clients
        self.rounds = rounds
        self.workdir = workdir
        self.fake = fake
        self.writes = streams.Writes(fake, prefix="bench-stream-floor")
        self.figures = Figures([], [], [], [])

    def run(self) -> None:
        database = self.workdir / "stream-floor.db"
        seed.seed_sqlite_sync(database, seed.synthetic(100, prefix="held"))
        url = f"sqlite+aiosqlite:///{database}"
        for number in range(self.rounds):
            order = (self.floor, self.service) if number % 2 == 0 else (self.service, self.floor)
            for measure in order:
                measure(url)
            progress(
                f"stream floor round {number + 1}/{self.rounds}: service {self.figures.service[-1].per_client_kb:.2f} "
                f"KB per client, floor {self.figures.floor[-1].per_client_kb:.2f} KB"
            )

    def floor(self, database_url: str) -> None:
        with start_floor(log_dir=self.workdir) as floor:
            open_one(floor)
            with holding(floor, count=self.clients) as (_, held):
                self.figures.floor.append(held)

    def service(self, database_url: str) -> None:
        with streams.start(name="stream-service", database_url=database_url, fake=self.fake,
                           workdir=self.workdir) as service:  # fmt: skip
            streams.warm_up(service, self.writes)
            with holding(service, count=self.clients) as (clients, held):
                self.figures.service.append(held)
                progress(f"stream floor: {clients.connected} idle clients on the service; its CPU over "
                         f"{streams.HEARTBEAT_SECONDS + 1:g}s")  # fmt: skip
                self.figures.cpu.append(streams.idle_cpu(service, streams.HEARTBEAT_SECONDS + 1))
                self.figures.local += [
                    streams.delivery(clients, write=self.writes.by_the_server(service.base), settle=2.0)
                    for _ in range(3)
                ]

    def rows(self) -> list[Row]:
        figures = self.figures
        connected = min(held.clients for held in figures.floor + figures.service)
        floor_kb = statistics.median(held.per_client_kb for held in figures.floor)
        service_kb = statistics.median(held.per_client_kb for held in figures.service)
        ratio = service_kb / floor_kb
        cpu = max(figures.cpu)
        local = streams.worst(figures.local)
        everyone = all(probe.received == probe.clients for probe in figures.local)
        delivered = everyone and local.p99_ms < TARGET_DELIVERY_MS
        return [
            Row("stream.held.clients", connected, "clients", target=f"== {self.clients}", ok=connected == self.clients),
            Row("stream.held.floor", floor_kb, "KB/client"),
            Row("stream.held.per_client", service_kb, "KB/client", floor_kb, ratio, f"<= {TARGET_RATIO:.2f}x floor",
                ratio <= TARGET_RATIO),
            Row("stream.held.idle.cpu", cpu, "% core", target=f"< {TARGET_CPU:g}", ok=cpu < TARGET_CPU),
            Row("stream.held.local.received", local.received, "clients", target="all", ok=everyone),
            Row("stream.held.local.p50", local.p50_ms, "ms"),
            Row("stream.held.local.p99", local.p99_ms, "ms", target=f"< {TARGET_DELIVERY_MS:.0f}", ok=delivered),
            Row("stream.held.local.max", local.max_ms, "ms"),
        ]  # fmt: skip

    def note(self) -> str:
        figures = self.figures
        return (
            f"Held streams: {self.clients} idle clients (bench.sse_clients), on the service (`serve --no-poll`, "
            "SQLite) and on the floor (a raw ASGI app holding the stream's head open on the same uvicorn, "
            f"httptools and uvloop), each a fresh process, {self.rounds} alternating rounds; KB per client = "
            "(RSS with the clients - RSS before) / clients, median. Per round, service / floor: "
            + ", ".join(
                f"{service.per_client_kb:.2f} / {floor.per_client_kb:.2f}"
                for service, floor in zip(figures.service, figures.floor, strict=True)
            )
            + f" KB. Idle CPU over {streams.HEARTBEAT_SECONDS + 1:g}s (the worst round); delivery of a change the "
            "service writes itself (a live lookup, stored) from just before its request to each client, worst of "
            f"{len(figures.local)} probes."
        )


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import aws_environment

    parser = argparse.ArgumentParser(prog="python -m bench.stream_floor", description=__doc__)
    parser.add_argument("--clients", type=int, default=5000, help="idle stream clients held open (default 5000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the floor and the service")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-stream-floor-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        stack.enter_context(aws_environment(fake.endpoint_url))
        bench = StreamFloorBench(clients=args.clients, rounds=max(1, args.rounds), workdir=workdir, fake=fake)
        bench.run()
    rows = bench.rows()
    print(f"python -m bench.stream_floor --clients {args.clients} --rounds {args.rounds}; "
          f"{time.monotonic() - started:.0f}s; load average {report.load_average()} at end")  # fmt: skip
    print(report.table(rows))
    print(f"- {bench.note()}")
    missed = [row.figure for row in rows if row.ok is False]
    print(f"targets missed: {', '.join(missed) if missed else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
