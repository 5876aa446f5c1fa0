"""The scripted fault run: `statuscache serve` behind a fault-injecting proxy to the fake AWS, on a private PostgreSQL.

    .venv/bin/python scripts/fault_run.py [--short] [--json results.json]

One real `serve` process (API, reconciler, event consumer, rechecker) talks to AWS only through a small HTTP
proxy of ours in front of the fake AWS (moto plus the Image Builder fake), and to a PostgreSQL server of
its own. The run then, phase by phase, makes the proxy throttle, answer 5xx, reset connections, answer
slower than the live-lookup bound, or refuse every connection (the service is restarted during that one),
and stops the database; during each fault it changes AWS (a new build, an Image Builder state, an AMI
appearing, a stack settling) and sends the events those changes would send, while a reader asks for every
image as fast as it is answered. Afterwards it checks every answer against the truth: what a healthy
lookup (the service's own observe_live, straight at the fake) says at the time.

Figures, per phase:
- reads during the fault and how many were answered 200 (images cached before it, and new ones);
- answers served as a plain hit (`X-Cache: HIT` without `X-Cache-Stale`) that were never true ("wrong"), at
  any time, and after the fault ended; and hits still showing an earlier truth after it ended ("outdated");
- seconds from the end of the fault until every image is answered as a plain hit equal to the truth;
- at the end: events sent, and events lost (an image whose final answer is not its truth), rechecks left,
  and the service log's tracebacks.

Nothing here is production code; it needs the [demo] extra (moto) and PostgreSQL's server binaries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import httpx

from service.aws import Aws
from service.demo.fakeaws import ACCOUNT_ID, FakeAws, _classify, _error
from service.domain import records
from service.ingest.observe import observe_live

REGION = "us-east-1"
READERS = 4
AWS_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
PG_BIN = Path(os.environ.get("STATUSCACHE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
ROOT = Path(__file__).resolve().parent.parent

# --- the proxy -------------------------------------------------------------------------------------

THROTTLE = {"ec2": "RequestLimitExceeded", "s3": "SlowDown", "imagebuilder": "ThrottlingException"}


@dataclass
class Fault:
    """What the proxy does to a request whose service.Operation `applies` to: throttle, 5xx, reset, slow."""

    kind: str
    applies: Callable[[str], bool]
    probability: float = 1.0
    delay: float = 0.0


def parts_of_a_lookup(operation: str) -> bool:
    """The calls whose failure used to be cached as the truth: Image Builder, its stack resource, the bucket."""
    return operation in {"imagebuilder.GetImage", "cloudformation.DescribeStackResource", "s3.HeadBucket"}


def everything_but_the_queue(operation: str) -> bool:
    return not operation.startswith("sqs.")


class FaultProxy:
    """HTTP/1.1 in front of the fake AWS; `fault` (None: pass through) and `down` (refuse connections) are switches."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fault: Fault | None = None
        self.port = 0
        self.faulted = 0
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and cut the open ones (the service's keep-alive pool with them)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._clients):
            _reset(writer)

    async def close(self) -> None:
        """Down, and every connection's handler finished (none left pending when the loop ends)."""
        await self.down()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        self._clients.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                fault = self._fault_for(method, target, headers, body)
                if fault is not None:
                    self.faulted += 1
                    if fault.kind == "reset":
                        _reset(writer)
                        return
                    if fault.kind == "slow":
                        await asyncio.sleep(fault.delay)
                    else:
                        writer.write(self._error(fault, method, target, headers, body))
                        await writer.drain()
                        continue
                writer.write(await self._forward(method, target, headers, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # The loop is ending: asyncio's stream callback would report a cancelled handler as an error.
            return
        finally:
            self._clients.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _operation(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[str, str]:
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "PATH_INFO": unquote(path), "QUERY_STRING": query,
            "CONTENT_TYPE": headers.get("content-type", ""), "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        for name in ("authorization", "x-amz-target", "x-amz-copy-source"):
            if name in headers:
                environ["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        service, operation, protocol = _classify(environ)
        return f"{service}.{operation}", protocol

    def _fault_for(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Fault | None:
        fault = self.fault
        if fault is None:
            return None
        operation, _ = self._operation(method, target, headers, body)
        if not fault.applies(operation) or random.random() >= fault.probability:
            return None
        return fault

    def _error(self, fault: Fault, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        operation, protocol = self._operation(method, target, headers, body)
        service = operation.partition(".")[0]
        if fault.kind == "throttle":
            code = THROTTLE.get(service, "Throttling")
            status = 503 if service == "s3" else 400
        else:
            code, status = ("InternalError" if service == "s3" else "InternalFailure"), 500
        status, response_headers, payload = _error(protocol, code=code, message=f"{code} (fault run)", status=status)
        if method == "HEAD":
            payload = b""
        return _response(status, response_headers, payload, length=len(payload))

    async def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        try:
            # HTTP/1.0 upstream: a plain body ended by the close, never chunked.
            lines = [f"{method} {target} HTTP/1.0"]
            lines += [f"{name}: {value}" for name, value in headers.items() if name not in {"connection", "expect"}]
            upstream_writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await upstream_writer.drain()
            raw = await upstream_reader.read()
        finally:
            upstream_writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        if any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in header_lines):
            payload = _dechunked(payload)  # werkzeug chunks even an HTTP/1.0 answer
        kept = [
            tuple(line.split(":", 1)) for line in header_lines
            if line.split(":", 1)[0].lower() not in {"connection", "content-length", "transfer-encoding"}
        ]
        length = len(payload)
        if method == "HEAD":
            length = next((int(line.split(":", 1)[1]) for line in header_lines
                           if line.lower().startswith("content-length:")), 0)
            payload = b""
        return _response(status, [(name, value.strip()) for name, value in kept], payload, length=length)


def _dechunked(payload: bytes) -> bytes:
    body = b""
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += rest[:size]
        payload = rest[size + 2 :]
    return body


def _response(status: int, headers: list[tuple[str, str]], body: bytes, *, length: int) -> bytes:
    head = [f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}", f"Content-Length: {length}"]
    head += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, target, headers, body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a load balancer or a dying connection does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- a private PostgreSQL -----------------------------------------------------------------------


class PrivatePostgres:
    """initdb into a temporary directory, on a free port: never the shared server."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"),
                  "-w", "start")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Read:
    at: float
    image_id: str
    status: int
    cache: str
    stale: str
    body: str | None


@dataclass
class PhaseResult:
    name: str
    fault_seconds: float
    reads_during: int = 0
    cached_reads_during: int = 0
    cached_answered_200: int = 0
    new_reads_during: int = 0
    new_answered: dict[str, int] = field(default_factory=dict)
    stale_answers_during: int = 0
    wrong_hits_during: int = 0
    wrong_hits_after: int = 0
    outdated_hits_after: int = 0
    last_outdated_hit_after_seconds: float | None = None
    # The last answer after the fault that was not yet a plain hit equal to the truth (seconds after its end).
    settled_after_seconds: float | None = None
    converged: bool = False
    restart_ready_after_seconds: float | None = None
    reads_while_restarting: int = 0
    events_sent: int = 0


def _difference(response: httpx.Response, truth: str) -> str:
    if response.status_code != 200:
        return response.text[:300]
    served = json.loads(normalized(response.json()))
    expected = json.loads(truth) if truth != "404" else {}
    keys = sorted(set(served) | set(expected))
    return "; ".join(
        f"{key}: served {served.get(key)!r}, truth {expected.get(key)!r}"
        for key in keys if served.get(key) != expected.get(key)
    )


def normalized(body: dict[str, Any]) -> str:
    """The answer without its signature: the configuration URL cut to /bucket/key."""
    url = body.get("imageConfiguration", {}).get("url")
    if url and url != "NOT_AVAILABLE":
        body = {**body, "imageConfiguration": {"url": urlsplit(url).path}}
    return json.dumps(body, sort_keys=True)


class Run:
    def __init__(self, *, workdir: Path, short: bool) -> None:
        self.workdir = workdir
        self.short = short
        self.fake = FakeAws()
        self.proxy: FaultProxy | None = None
        self.postgres = PrivatePostgres(workdir / "pg")
        self.server: subprocess.Popen[bytes] | None = None
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.truths: dict[str, list[str]] = {}
        self.reads: list[Read] = []
        self.image_ids: list[str] = []
        self.new_ids: set[str] = set()
        self.events = 0
        self.event_ids = iter(range(1, 10**9))
        # Images with a stack still building: what the mutations move along.
        self.building: list[str] = []
        self.restarts = 0
        # Events waiting to be sent (boto3 blocks: they go out from a thread, in order).
        self.outbox: list[str] = []
        # The last answer that was not yet the truth (what a run that does not converge reports).
        self.unsettled = ""
        # Every answer the readers got, by status, X-Cache and X-Cache-Stale.
        self.answers: dict[str, int] = {}

    # -- setup -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.fake.start()
        os.environ.update({
            "AWS_ENDPOINT_URL": self.fake.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
        })
        self.workdir.chmod(0o755)  # the server runs as the postgres user: it must reach its directory
        (self.workdir / "pg").mkdir()
        await asyncio.to_thread(self.postgres.create)
        self.proxy = FaultProxy(self.fake.endpoint_url)
        await self.proxy.up()
        self.sqs = boto3.client("sqs", region_name=REGION, endpoint_url=self.fake.endpoint_url)
        self.queue_url = self.sqs.create_queue(QueueName="faultrun-events", Attributes={"VisibilityTimeout": "2"})[
            "QueueUrl"
        ]
        for index in range(3):
            self.fake.create_ami(region=REGION, image_id=f"done-{index}")
        for index in range(14 if not self.short else 8):
            self.fake.create_image_stack(region=REGION, image_id=f"building-{index}", imagebuilder_status="BUILDING")
            self.building.append(f"building-{index}")
        self.fake.create_image_stack(region=REGION, image_id="rolled-back", status="ROLLBACK_COMPLETE",
                                     reason="The following resource(s) failed to create: [ParallelClusterImage].",
                                     imagebuilder_status="FAILED", imagebuilder_reason="Build failed")
        self.image_ids = ["done-0", "done-1", "done-2", *self.building, "rolled-back"]
        async with self.oracle() as aws:
            for image_id in self.image_ids:
                await self.snapshot(aws, image_id)
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "service", "migrate"], env=self.env(), check=True, cwd=ROOT,
            capture_output=True, timeout=120,
        )
        self.serve()
        await self.wait_ready(within=60)
        if await self.wait_converged(within=60) is None:
            raise AssertionError(f"the first reconcile did not store every image: {self.unsettled}")

    def env(self) -> dict[str, str]:
        assert self.proxy is not None
        return {
            **{key: value for key, value in os.environ.items() if not key.startswith(("STATUSCACHE_", "AWS_"))},
            "AWS_ENDPOINT_URL": self.proxy.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "STATUSCACHE_DATABASE_URL": self.postgres.url,
            "STATUSCACHE_REGIONS": REGION,
            "STATUSCACHE_EVENTS_QUEUE_URL": self.queue_url,
            # Reconciliation would repair a lost event: keep it out of the run (it runs once, at start).
            "STATUSCACHE_RESYNC_SECONDS": "3600",
            "STATUSCACHE_BACKOFF_INITIAL_SECONDS": "0.2",
            "STATUSCACHE_BACKOFF_MAX_SECONDS": "2",
            "STATUSCACHE_RECHECK_BACKOFF_INITIAL_SECONDS": "0.5",
            "STATUSCACHE_RECHECK_BACKOFF_MAX_SECONDS": "4",
            "STATUSCACHE_LIVE_LOOKUP_TIMEOUT_SECONDS": "3",
            "STATUSCACHE_LIVE_LOOKUPS_PER_SECOND": "100",
            "STATUSCACHE_LIVE_LOOKUPS_PER_CALLER_PER_SECOND": "100",
            "STATUSCACHE_DB_POOL_TIMEOUT_SECONDS": "2",
            "STATUSCACHE_LOG_LEVEL": "INFO",
        }

    def serve(self) -> None:
        with open(self.workdir / f"serve-{self.restarts}.log", "wb") as log:  # the child keeps its own descriptor
            self.server = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port)],
                env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )

    def stop_serving(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    async def wait_ready(self, *, within: float) -> float:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.base, timeout=2) as http:
            while time.monotonic() - started < within:
                assert self.server is not None and self.server.poll() is None, "serve exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/readyz")).status_code == 200:
                        return time.monotonic() - started
                await asyncio.sleep(0.1)
        raise AssertionError(f"serve not ready within {within}s")

    @contextlib.asynccontextmanager
    async def oracle(self) -> Any:
        aws = Aws()  # straight at the fake AWS: this process's AWS_ENDPOINT_URL
        try:
            yield aws
        finally:
            await aws.close()

    async def snapshot(self, aws: Aws, image_id: str) -> None:
        """Record what a healthy lookup says about `image_id` now, as one more truth it has had."""
        change = await observe_live(aws, region=REGION, image_id=image_id)
        rendered = records.render(region=REGION, image_id=image_id, parts=records.merge(records.Parts(), change))
        if rendered.document is None:
            truth = "404"
        else:
            config = rendered.config
            url = f"/{config.bucket}/{config.key}" if config.signable else "NOT_AVAILABLE"
            truth = json.dumps({**json.loads(rendered.document), "imageConfiguration": {"url": url}}, sort_keys=True)
        history = self.truths.setdefault(image_id, [])
        if not history or history[-1] != truth:
            history.append(truth)

    # -- events ------------------------------------------------------------------------------------

    def send(self, detail_type: str, source: str, *, resources: list[str], detail: dict[str, Any]) -> None:
        body = {
            "version": "0", "id": f"faultrun-{next(self.event_ids)}", "detail-type": detail_type, "source": source,
            "account": ACCOUNT_ID, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": REGION,
            "resources": resources, "detail": detail,
        }
        self.outbox.append(json.dumps(body))
        self.events += 1

    def stack_event(self, image_id: str, status: str) -> None:
        stack_id = self.fake.stack_id(region=REGION, stack_name=image_id)
        self.send("CloudFormation Stack Status Change", "aws.cloudformation", resources=[stack_id],
                  detail={"stack-id": stack_id, "status-details": {"status": status, "status-reason": ""}})

    async def mutate(self, phase: str) -> int:
        """Change AWS as a build does, with the events it sends; returns the number of events."""
        before = self.events
        async with self.oracle() as aws:
            # A new build: its stack event, and a reader asking for it (a live lookup).
            new_id = f"new-{phase}"
            self.fake.create_image_stack(region=REGION, image_id=new_id, imagebuilder_status="PENDING")
            self.image_ids.append(new_id)
            self.new_ids.add(new_id)
            await self.snapshot(aws, new_id)
            self.stack_event(new_id, "CREATE_IN_PROGRESS")
            # A build moves on in Image Builder (an event the cache applies without asking AWS).
            testing = self.building.pop(0)
            arn = self.fake.imagebuilder_arn(region=REGION, image_id=testing)
            self.fake.put_imagebuilder_image(arn, status="TESTING")
            await self.snapshot(aws, testing)
            self.send("EC2 Image Builder Image State Change", "aws.imagebuilder", resources=[arn],
                      detail={"previous-state": {"status": "BUILDING"}, "state": {"status": "TESTING"}})
            # A build finishes: its AMI appears (EC2 must say whose it is) and its stack completes.
            finished = self.building.pop(0)
            ami_id = self.fake.create_ami(region=REGION, image_id=finished)
            self.fake.put_imagebuilder_image(self.fake.imagebuilder_arn(region=REGION, image_id=finished),
                                             status="AVAILABLE")
            self.fake.set_stack_status(region=REGION, stack_name=finished, status="CREATE_COMPLETE")
            await self.snapshot(aws, finished)
            self.send("EC2 AMI State Change", "aws.ec2", resources=[f"arn:aws:ec2:{REGION}::image/{ami_id}"],
                      detail={"ImageId": ami_id, "State": "available"})
            self.stack_event(finished, "CREATE_COMPLETE")
        outbox, self.outbox = self.outbox, []
        for body in outbox:
            await asyncio.to_thread(self.sqs.send_message, QueueUrl=self.queue_url, MessageBody=body)
        return self.events - before

    # -- reading -----------------------------------------------------------------------------------

    async def reader(self, stop: asyncio.Event, *, start: int) -> None:
        """GET the images round-robin (from `start`), one at a time, on one keep-alive connection."""
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            index = start
            while not stop.is_set():
                image_id = self.image_ids[index % len(self.image_ids)]
                index += 1
                try:
                    response = await http.get(f"/v3/images/custom/{image_id}", params={"region": REGION})
                except httpx.HTTPError:
                    self.reads.append(Read(time.monotonic(), image_id, 0, "", "", None))
                    await asyncio.sleep(0.05)
                    continue
                body = None
                if response.status_code == 200:
                    body = normalized(response.json())
                elif response.status_code == 404:
                    body = "404"
                self.reads.append(Read(time.monotonic(), image_id, response.status_code,
                                       response.headers.get("x-cache", ""), response.headers.get("x-cache-stale", ""),
                                       body))
                await asyncio.sleep(0.01)

    def plain_hit(self, read: Read) -> bool:
        return read.cache == "HIT" and not read.stale and read.body is not None

    async def wait_converged(self, *, within: float) -> float | None:
        """Seconds until every image is answered as a plain hit equal to its truth (None: not `within` seconds)."""
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            while time.monotonic() - started < within:
                good = True
                for image_id in list(self.image_ids):
                    try:
                        response = await http.get(f"/v3/images/custom/{image_id}", params={"region": REGION})
                    except httpx.HTTPError:
                        good = False
                        break
                    if (
                        response.status_code != 200 or response.headers.get("x-cache") != "HIT"
                        or "x-cache-stale" in response.headers
                        or normalized(response.json()) != self.truths[image_id][-1]
                    ):
                        self.unsettled = (
                            f"{image_id}: {response.status_code} {response.headers.get('x-cache')} "
                            f"{response.headers.get('x-cache-stale')} "
                            + _difference(response, self.truths[image_id][-1])
                        )
                        good = False
                        break
                if good:
                    return time.monotonic() - started
                await asyncio.sleep(0.2)
        return None

    # -- phases ------------------------------------------------------------------------------------

    async def phase(self, name: str, *, fault_seconds: float, recover_seconds: float) -> PhaseResult:
        assert self.proxy is not None
        result = PhaseResult(name=name, fault_seconds=fault_seconds)
        cached_before = set(self.image_ids)
        begin = time.monotonic()
        stop = asyncio.Event()
        readers = [asyncio.create_task(self.reader(stop, start=index * 5)) for index in range(READERS)]
        await asyncio.sleep(0.5)
        fault_start = time.monotonic()
        restart_ready: float | None = None
        if name == "database stop":
            await asyncio.to_thread(self.postgres.stop)
        elif name == "full outage":
            await self.proxy.down()
        else:
            self.proxy.fault = {
                "throttling": Fault("throttle", parts_of_a_lookup),
                "5xx": Fault("5xx", everything_but_the_queue, probability=0.5),
                "connection resets": Fault("reset", everything_but_the_queue, probability=0.5),
                "slowness": Fault("slow", parts_of_a_lookup, delay=4.0),
            }[name]
        result.events_sent = await self.mutate(name.split()[0])
        restart = (0.0, 0.0)
        if name == "full outage":
            # A restart while AWS is unreachable: ready at once, serving what the database holds.
            stopping = time.monotonic()
            await asyncio.to_thread(self.stop_serving)
            self.restarts += 1
            self.serve()
            restart_ready = await self.wait_ready(within=30)
            restart = (stopping, time.monotonic())
        await asyncio.sleep(max(0.0, fault_seconds - (time.monotonic() - fault_start)))
        fault_end = time.monotonic()
        if name == "database stop":
            await asyncio.to_thread(self.postgres.start)
        elif name == "full outage":
            await self.proxy.up()
        else:
            self.proxy.fault = None
        await asyncio.sleep(recover_seconds)
        stop.set()
        await asyncio.gather(*readers)
        result.converged = await self.wait_converged(within=60) is not None
        result.restart_ready_after_seconds = round(restart_ready, 2) if restart_ready is not None else None
        result.settled_after_seconds = 0.0
        # The figures.
        for read in self.reads:
            if read.at < begin:
                continue
            truths = self.truths.get(read.image_id, [])
            during = fault_start <= read.at < fault_end
            if restart[0] <= read.at < restart[1]:
                result.reads_while_restarting += 1  # no process to answer: not the service's figures
                continue
            if during:
                result.reads_during += 1
                result.stale_answers_during += bool(read.stale) or read.cache == "STALE"
                if read.image_id in cached_before:
                    result.cached_reads_during += 1
                    result.cached_answered_200 += read.status == 200
                else:
                    result.new_reads_during += 1
                    key = f"{read.status} {read.cache}".strip()
                    result.new_answered[key] = result.new_answered.get(key, 0) + 1
            settled = self.plain_hit(read) and read.body == truths[-1]
            if read.at >= fault_end and not settled:
                result.settled_after_seconds = round(read.at - fault_end, 2)
            if not self.plain_hit(read):
                continue
            if read.body not in truths:
                if during:
                    result.wrong_hits_during += 1
                elif read.at >= fault_end:
                    result.wrong_hits_after += 1
            elif read.at >= fault_end and read.body != truths[-1]:
                result.outdated_hits_after += 1
                result.last_outdated_hit_after_seconds = round(read.at - fault_end, 2)
        for read in self.reads:
            key = f"{read.status} {read.cache} {read.stale}".strip()
            self.answers[key] = self.answers.get(key, 0) + 1
        self.reads.clear()
        return result

    async def finish(self) -> dict[str, Any]:
        converged = await self.wait_converged(within=60)
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            ready = (await http.get("/readyz")).json()
            lost = []
            for image_id in self.image_ids:
                response = await http.get(f"/v3/images/custom/{image_id}")
                if response.status_code != 200 or normalized(response.json()) != self.truths[image_id][-1]:
                    lost.append(image_id)
        await asyncio.to_thread(self.stop_serving)
        logs = "".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob("serve-*.log")))
        return {
            "events_sent": self.events,
            "images_not_matching_the_truth_at_the_end": lost,
            "converged_at_the_end": converged is not None,
            "rechecks_left": ready.get("rechecksOwed"),
            "answers": dict(sorted(self.answers.items())),
            "log_tracebacks": logs.count("Traceback"),
            "log_database_lines": sum("database unavailable" in line or "database available again" in line
                                      or "database still unavailable" in line for line in logs.splitlines()),
            "log_lines": len(logs.splitlines()),
        }

    async def close(self) -> None:
        await asyncio.to_thread(self.stop_serving)
        if self.proxy is not None:
            await self.proxy.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.postgres.stop)
        self.fake.stop()


PHASES = ["throttling", "5xx", "connection resets", "slowness", "full outage", "database stop"]
SHORT_PHASES = ["throttling", "full outage", "database stop"]


async def run(*, short: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    """The whole run; its figures as a dict (phases, then the end)."""
    directory = workdir or Path(tempfile.mkdtemp(prefix="statuscache-faultrun-"))
    the_run = Run(workdir=directory, short=short)
    # The oracle's AWS clients read botocore's environment: point it at the fake for the run, then put it back.
    saved = {name: os.environ.get(name) for name in AWS_ENVIRONMENT}
    try:
        await the_run.start()
        phases = []
        for name in SHORT_PHASES if short else PHASES:
            fault, recover = (5.0, 5.0) if short else (10.0, 10.0)
            phases.append(asdict(await the_run.phase(name, fault_seconds=fault, recover_seconds=recover)))
        return {"phases": phases, "end": await the_run.finish(), "workdir": str(directory)}
    finally:
        await the_run.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def report(results: dict[str, Any]) -> str:
    lines = [
        "| phase | reads during | cached answered 200 | new images answered | stale-marked | wrong hits during"
        " / after | outdated hits after (last at) | settled after | events | restart |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in results["phases"]:
        cached = f"{phase['cached_answered_200']}/{phase['cached_reads_during']}"
        last = phase["last_outdated_hit_after_seconds"]
        lines.append(
            f"| {phase['name']} | {phase['reads_during']} | {cached} | {phase['new_answered']} |"
            f" {phase['stale_answers_during']} | {phase['wrong_hits_during']} / {phase['wrong_hits_after']} |"
            f" {phase['outdated_hits_after']}{f' (+{last}s)' if last is not None else ''} |"
            f" {phase['settled_after_seconds']} s{'' if phase['converged'] else ' (NOT CONVERGED)'} |"
            f" {phase['events_sent']} |"
            + (f" ready in {phase['restart_ready_after_seconds']} s ({phase['reads_while_restarting']} reads"
               " found no process) |" if phase["restart_ready_after_seconds"] is not None else " |")
        )
    lines.append("")
    lines.append(json.dumps(results["end"], indent=2, sort_keys=True))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="three phases of five seconds (the test's run)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    results = asyncio.run(run(short=args.short))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    end = results["end"]
    wrong = sum(phase["wrong_hits_during"] + phase["wrong_hits_after"] for phase in results["phases"])
    return 0 if wrong == 0 and not end["images_not_matching_the_truth_at_the_end"] and not end["rechecks_left"] else 1


if __name__ == "__main__":
    sys.exit(main())
