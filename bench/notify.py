"""python -m bench.notify: change -> webhook delivery latency (p50/p99) with many subscriptions and a burst of
transitions, the cached describe's ratio to bare Starlette while bursts are delivered, and wait-image's return
after the change. A benchmark, not a test: it prints figures.

    python -m bench.notify [--subscriptions 100] [--burst 1000] [--fanout own|all] [--waits 20]
                           [--ratio-rounds 5] [--database-url URL]

The service side is a runtime and its notifier in this process, as `serve` or `poll` runs them; the receiver is a
minimal ASGI app in uvicorn in a process of its own, recording when each webhook-id arrives. A change's latency is
from the commit of the batch that made it to the webhook's arrival. `--fanout own` (the default): each subscription
watches its own images, so each transition is one delivery; `all`: every subscription takes every transition (a
burst of 1,000 is 100,000 deliveries with 100 subscriptions).

The ratio: wrk rounds alternating between the cached describe and the bare Starlette ceiling serving its bytes,
quiet and then while this process ingests and delivers burst after burst; the describe served by this process
itself (its event loop also delivers) and by an API replica in a process of its own (`serve --no-poll`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
import uvloop

from bench import servers, wrk
from service.api.app import create_app
from service.aws import Aws
from service.client import Client
from service.domain.models import Change, ConfigLocation, Observed, Source, StackInfo
from service.notify.config import SubscriptionsFile
from service.runtime import Runtime
from service.settings import Settings
from service.store import db

REGION = "us-east-1"
T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def change(image_id: str, status: str, minute: int) -> Change:
    at = T + timedelta(minutes=minute)
    stack = StackInfo(
        name=image_id, stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{image_id}/1", status=status,
        creation_time=T, tags=(("parallelcluster:image_id", image_id), ("parallelcluster:version", "3.9.0")),
    )  # fmt: skip
    return Change(
        region=REGION, image_id=image_id, source=Source.EVENT, observed_at=at, happened_at=at,
        stack=Observed(at, stack), config=Observed(at, ConfigLocation(bucket="b", key="k", available=True)),
    )  # fmt: skip


class Receiver:
    """Records the arrival time of every (path, webhook-id): one path per subscription. GET /arrivals gives them."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            body = orjson.dumps({"count": self.count, "arrivals": [[*key, at] for key, at in self.arrivals.items()]})
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        headers = dict(scope["headers"])
        self.arrivals.setdefault((scope["path"], headers[b"webhook-id"].decode()), time.time())
        self.count += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def receive_on(port: int) -> None:
    """The receiver, in a process of its own (`--receiver PORT`): it must not share the service's CPU time."""
    uvicorn.run(Receiver(), port=port, log_level="warning", lifespan="off", backlog=4096)


@contextlib.contextmanager
def receiver_process(port: int) -> Iterator[str]:
    process = subprocess.Popen([sys.executable, "-m", "bench.notify", "--receiver", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/arrivals")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def arrivals(base: str) -> tuple[int, dict[tuple[str, str], float]]:
    answer = httpx.get(base + "/arrivals", timeout=60).json()
    return answer["count"], {(path, message_id): at for path, message_id, at in answer["arrivals"]}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def deliveries(args: argparse.Namespace, directory: Path) -> None:
    port = free_port()
    with receiver_process(port) as receiver_url:
        await _deliveries(args, directory, port, receiver_url)


def image_name(n: int, *, subscriptions: int) -> str:
    """The burst's n-th image: named after the subscription that watches it in the `own` fan-out."""
    return f"bench-s{n % subscriptions:03d}-{n:05d}"


async def _deliveries(args: argparse.Namespace, directory: Path, port: int, receiver_url: str) -> None:
    secret = directory / "secret"
    secret.write_text("whsec_" + base64.b64encode(b"b" * 32).decode())
    # `own`: each subscription watches its own images (a team's pipeline), so each transition goes to one of them;
    # `all`: every subscription takes every transition (the burst times the subscriptions).
    own = args.fanout == "own"
    hooks = "".join(
        f'[[webhook]]\nname = "s{n:03d}"\nurl = "http://127.0.0.1:{port}/s{n:03d}"\nsecret_file = "{secret}"\n'
        + (f'image_ids = ["bench-s{n:03d}-*"]\n' if own else "")
        for n in range(args.subscriptions)
    )
    path = directory / "subscriptions.toml"
    path.write_text(hooks)
    settings = Settings(database_url=args.database_url or f"sqlite+aiosqlite:///{directory / 'bench.db'}",
                        regions=(REGION,))  # fmt: skip
    await db.migrate(settings.database_url)
    runtime = Runtime.build(settings, engine=db.create_engine(settings), aws=Aws())
    images = [image_name(n, subscriptions=args.subscriptions) for n in range(args.burst)]
    try:
        for start in range(0, len(images), 100):
            batch = [change(image, "CREATE_IN_PROGRESS", 0) for image in images[start : start + 100]]
            await runtime.cache.apply_many(batch)
        runtime.notify(SubscriptionsFile(str(path), served_regions=(REGION,)))
        while len(runtime.metrics.notify_lag) < args.subscriptions:  # noqa: ASYNC110 - a figure, not a test
            await asyncio.sleep(0.05)
        committed: dict[str, float] = {}
        began = time.time()
        for start in range(0, len(images), 100):
            results = await runtime.cache.apply_many(
                [change(image, "CREATE_COMPLETE", 1) for image in images[start:start + 100]]
            )
            now = time.time()
            for result in results:
                committed[result.image_id] = now
        expected = args.burst if own else args.subscriptions * args.burst
        deadline = time.time() + args.seconds
        count, arrived_at = 0, dict[tuple[str, str], float]()
        while time.time() < deadline:
            count, arrived_at = await asyncio.to_thread(arrivals, receiver_url)
            if len(arrived_at) >= expected:
                break
            await asyncio.sleep(0.5)
        ended = max(arrived_at.values(), default=time.time())
        by_message = await _message_times(runtime, committed)
        latencies = [arrived - by_message[message_id] for (_, message_id), arrived in arrived_at.items()
                     if message_id in by_message]  # fmt: skip
        per_subscription: dict[str, list[float]] = defaultdict(list)
        for (path_name, message_id), arrived in arrived_at.items():
            if message_id in by_message:
                per_subscription[path_name].append(arrived - by_message[message_id])
        fanout = "each watching its own images" if own else "each taking every transition"
        print(f"deliveries: {args.subscriptions} webhook subscriptions ({fanout}), a burst of {args.burst} "
              f"transitions ({settings.database_url.split(':')[0]})")  # fmt: skip
        print(f"  delivered {len(arrived_at)}/{expected} distinct in {ended - began:.1f}s "
              f"({len(arrived_at) / max(ended - began, 1e-9):.0f}/s); requests received {count}")
        if latencies:
            print(f"  change -> webhook: p50 {statistics.median(latencies) * 1000:.0f} ms, "
                  f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
            firsts = sorted(min(values) for values in per_subscription.values())
            print(f"  first delivery of each subscription after the burst began: p50 "
                  f"{statistics.median(firsts) * 1000:.0f} ms, p99 {percentile(firsts, 0.99) * 1000:.0f} ms")
        if args.ratio_rounds:
            await _describe_ratios(args, directory, runtime, settings, images)
    finally:
        await runtime.close()


async def _describe_ratios(
    args: argparse.Namespace, directory: Path, runtime: Runtime, settings: Settings, images: list[str]
) -> None:
    """The cached describe against the bare Starlette ceiling serving the same bytes (the ratio `make bench` tracks),
    wrk rounds alternating, first quiet, then while this process ingests and delivers burst after burst: served by
    the delivering process itself (`serve`: the API and the deliveries share one event loop) and by an API replica
    in a process of its own (`serve --no-poll`, the fleet's layout: `poll` delivers)."""
    path = f"/v3/images/custom/{images[0]}?region={REGION}"
    script = wrk.write_script(directory, "describe.lua", wrk.rotation_script([path], threads=1))
    async with api_in_process(settings, runtime) as own_port:
        body = directory / "describe.json"
        body.write_bytes((await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{own_port}{path}")).content)
        replica = await asyncio.to_thread(
            servers.start_serve, name="replica", database_url=settings.database_url, aws_endpoint="http://127.0.0.1:9",
            log_dir=directory, extra_env={"STATUSCACHE_ALLOW_ANONYMOUS": "1"},
        )  # fmt: skip
        ceiling = await asyncio.to_thread(servers.start_ceiling, body_path=body, log_dir=directory)
        targets = {"serve": own_port, "replica": replica.port, "ceiling": ceiling.port}

        def load(port: int, seconds: float) -> wrk.WrkResult:
            return wrk.run(f"http://127.0.0.1:{port}", script=script, connections=16, threads=1, duration=seconds)

        async def rounds() -> dict[str, list[tuple[wrk.WrkResult, wrk.WrkResult]]]:
            pairs: dict[str, list[tuple[wrk.WrkResult, wrk.WrkResult]]] = defaultdict(list)
            for number in range(args.ratio_rounds):
                for name in ("serve", "replica"):
                    order = [name, "ceiling"] if number % 2 == 0 else ["ceiling", name]
                    measured = {
                        who: await asyncio.to_thread(load, targets[who], args.describe_seconds) for who in order
                    }
                    pairs[name].append((measured[name], measured["ceiling"]))
            return pairs

        stop = asyncio.Event()
        bursts = [0]

        async def burst_after_burst() -> None:
            status = ["DELETE_IN_PROGRESS", "CREATE_COMPLETE"]
            while not stop.is_set():
                bursts[0] += 1
                for start in range(0, len(images), 100):
                    await runtime.cache.apply_many([
                        change(image, status[bursts[0] % 2], 1 + bursts[0]) for image in images[start:start + 100]
                    ])  # fmt: skip
                await asyncio.sleep(0.5)

        try:
            for target in targets.values():
                await asyncio.to_thread(load, target, 1.0)  # warm
            quiet = await rounds()
            delivered = sum(runtime.metrics.deliveries.values())
            background = asyncio.create_task(burst_after_burst())
            try:
                busy = await rounds()
                delivered = sum(runtime.metrics.deliveries.values()) - delivered
                # The same bursts with no one to tell: what following the ingest costs the API without the deliveries.
                assert runtime.notifier is not None
                await runtime.notifier.close()
                ingest_only = await rounds()
            finally:
                stop.set()
                await background
        finally:
            ceiling.stop()
            replica.stop()
    print(f"cached describe / bare Starlette (same bytes, same uvicorn), wrk -t1 -c16 -d{args.describe_seconds:g}s, "
          f"median of {args.ratio_rounds} alternating rounds; busy: this process ingesting burst after burst of "
          f"{len(images)} transitions ({bursts[0]} bursts), delivering them ({delivered} deliveries while measured), "
          f"then with its notifier stopped (ingest only)")
    for name, label in (("serve", "served by the delivering process (serve)"),
                        ("replica", "served by an API replica (serve --no-poll)")):  # fmt: skip
        line = []
        for state, pairs in (("quiet", quiet[name]), ("busy, ingest only", ingest_only[name]),
                             ("busy, ingest and deliveries", busy[name])):  # fmt: skip
            ratio = statistics.median(mine.rps / bare.rps for mine, bare in pairs)
            p99 = statistics.median(mine.p99_ms / bare.p99_ms for mine, bare in pairs)
            rps = statistics.median(mine.rps for mine, _ in pairs)
            line.append(f"{state} {ratio:.2f}x ({rps:,.0f} req/s, p99 {p99:.2f}x)")
        print(f"  {label}: " + "; ".join(line))


async def _message_times(runtime: Runtime, committed: dict[str, float]) -> dict[str, float]:
    from sqlalchemy import select

    from service.store.tables import transitions

    async with runtime.engine.connect() as connection:
        query = select(transitions.c.id, transitions.c.image_id, transitions.c.build_status)
        rows = (await connection.execute(query)).all()
    return {f"msg_{row.id}": committed[row.image_id] for row in rows if row.build_status == "BUILD_COMPLETE"
            and row.image_id in committed}  # fmt: skip


async def waits(args: argparse.Namespace, directory: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{directory / 'waits.db'}", regions=(REGION,))
    await db.migrate(settings.database_url)
    runtime = Runtime.build(settings, engine=db.create_engine(settings), aws=Aws())
    returned: list[float] = []
    try:
        async with api_in_process(settings, runtime) as port:
            with Client(f"http://127.0.0.1:{port}") as client:
                for n in range(args.waits):
                    image = f"wait-{n:03d}"
                    await runtime.cache.apply_many([change(image, "CREATE_IN_PROGRESS", 0)])
                    done: list[float] = []

                    def wait(image: str = image, done: list[float] = done) -> None:
                        client.wait_image(image, REGION, timeout=30)
                        done.append(time.time())

                    waiter = threading.Thread(target=wait)
                    waiter.start()
                    await asyncio.sleep(0.3)  # the wait has described and is following the stream
                    await runtime.cache.apply_many([change(image, "CREATE_COMPLETE", 1)])
                    committed = time.time()
                    await asyncio.to_thread(waiter.join)
                    returned.append(done[0] - committed)
    finally:
        await runtime.close()
    print(f"wait-image: {args.waits} waits, return after the change's commit: p50 "
          f"{statistics.median(returned) * 1000:.0f} ms, p99 {percentile(returned, 0.99) * 1000:.0f} ms, "
          f"max {max(returned) * 1000:.0f} ms")


@contextlib.asynccontextmanager
async def api_in_process(settings: Settings, runtime: Runtime) -> AsyncIterator[int]:
    """The API on `runtime`, in uvicorn on this event loop (as `serve` runs it beside its loops): its port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime=runtime), port=port, log_level="warning",
                                           lifespan="off"))  # fmt: skip
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await serving


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        if args.waits:
            await waits(args, Path(directory))
        await deliveries(args, Path(directory))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.notify")
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--waits", type=int, default=20)
    parser.add_argument(
        "--fanout", choices=("own", "all"), default="own",
        help="own: each subscription watches its own images (the target's case); all: every one takes every transition",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=600.0, help="give up waiting for deliveries after this")
    parser.add_argument("--ratio-rounds", type=int, default=5,
                        help="alternating rounds of the describe/ceiling ratio, quiet and during bursts (0: none)")
    parser.add_argument("--describe-seconds", type=float, default=2.0,
                        help="each wrk run of the describe/ceiling ratio")  # fmt: skip
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    parsed = arguments()
    if parsed.receiver:
        receive_on(parsed.receiver)
    else:
        # The event loop `serve` runs on.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(main(parsed))
