"""Where notices go: one `Sink` per kind of subscription, each answering what became of one notice
(service.domain.deliveries.Answer). A failure to reach a sink is an answer too (try again), never an exception."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from service.aws import Aws
from service.domain import deliveries
from service.domain.deliveries import Answer, Notice, Verdict
from service.domain.subscriptions import GONE, Sns, SsmParameter, Webhook, is_forbidden_address
from service.errors import AwsError
from service.store import subscriptions as store
from service.support.clock import utcnow

log = logging.getLogger(__name__)

USER_AGENT = "statuscache-webhooks"
# How much of a receiver's answer is read (only its status and Retry-After matter).
ANSWER_BYTES = 64 * 1024


class Sink(Protocol):
    async def send(self, notice: Notice) -> Answer: ...


# A webhook host's addresses are looked at again this often: a name that later resolves to the metadata address
# (DNS rebinding) is refused at send time too, not only when the file was read.
RESOLVE_SECONDS = 60.0


class WebhookSink:
    """POSTs each notice, signed as Standard Webhooks says, with the same webhook-id on every attempt.

    On aiohttp (aiobotocore's HTTP client, already in the process): a delivery costs about a fifth of httpx's CPU
    (measured in bench.notify: httpx spent about 2.7 ms of the event loop per POST, most in its connection pool's
    and anyio's bookkeeping), and a burst of a thousand deliveries is CPU on the one event loop the API shares."""

    def __init__(self, subscription: Webhook, *, http: aiohttp.ClientSession, timeout: float) -> None:
        self.subscription = subscription
        self._http = http
        self._timeout = timeout
        self._resolved_at = -RESOLVE_SECONDS

    @staticmethod
    def session(*, timeout: float) -> aiohttp.ClientSession:
        """One subscription's HTTP client: one connection (its deliveries go one at a time, in order), kept alive."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, ttl_dns_cache=int(RESOLVE_SECONDS)),
            timeout=aiohttp.ClientTimeout(total=timeout), headers={"accept": "*/*", "user-agent": USER_AGENT},
            # The receiver's cookies are not ours to keep, nor its compressed answers to inflate.
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
        )  # fmt: skip

    async def _host_refused(self) -> bool:
        if time.monotonic() - self._resolved_at < RESOLVE_SECONDS:
            return False
        host = urlsplit(self.subscription.url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return False  # not resolvable now: the request fails on its own, and is retried
        if any(is_forbidden_address(str(info[4][0])) for info in infos):
            return True
        self._resolved_at = time.monotonic()
        return False

    async def send(self, notice: Notice) -> Answer:
        if await self._host_refused():
            refused = f"{self.subscription.target} resolves to a link-local or instance-metadata address"
            return Answer(Verdict.RETRY, error=refused)
        payload = deliveries.body(notice)
        headers = deliveries.webhook_headers(
            secret=self.subscription.secret, message_id=notice.message_id, timestamp=int(time.time()),
            payload=payload,
        )  # fmt: skip
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.post(
                    self.subscription.url, data=payload, headers=headers, allow_redirects=False
                ) as response:
                    # What the receiver says is not read past a small bound (its connection is closed instead).
                    await response.content.read(ANSWER_BYTES)
                    status, retry_after = response.status, response.headers.get("retry-after")
        except TimeoutError:
            return Answer(Verdict.RETRY, error=f"no answer within {self._timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            # The URL is not repeated: its query may hold a token.
            return Answer(Verdict.RETRY, error=f"{type(exc).__name__}: could not reach {self.subscription.target}")
        return deliveries.webhook_answer(status, retry_after=retry_after, now=utcnow())


class SnsSink:
    """One SNS message per notice: the same JSON as a webhook's body, with its statuses as message attributes."""

    def __init__(self, subscription: Sns, *, aws: Aws, timeout: float) -> None:
        self.subscription = subscription
        self._aws = aws
        self._timeout = timeout

    async def send(self, notice: Notice) -> Answer:
        attributes = {"imageBuildStatus": notice.status, "imageId": notice.image_id, "region": notice.region}
        try:
            async with asyncio.timeout(self._timeout):
                await self._aws.publish(
                    topic_arn=self.subscription.topic_arn, message=deliveries.body(notice).decode(),
                    attributes=attributes,
                )  # fmt: skip
        except TimeoutError:
            return Answer(Verdict.RETRY, error=f"SNS did not answer within {self._timeout:g}s")
        except AwsError as exc:
            return Answer(Verdict.RETRY, error=f"{exc.operation}: {exc.code or type(exc).__name__}: {exc}")
        return Answer(Verdict.DELIVERED)


class SsmParameterSink:
    """Keeps an SSM parameter at the AMI of the newest BUILD_COMPLETE image the subscription matches."""

    def __init__(self, subscription: SsmParameter, *, aws: Aws, engine: AsyncEngine, timeout: float) -> None:
        self.subscription = subscription
        self._aws = aws
        self._engine = engine
        self._timeout = timeout

    async def send(self, notice: Notice) -> Answer:
        if notice.status == GONE or notice.ami_id is None:
            return Answer(Verdict.DELIVERED)
        name = self.subscription.parameter
        try:
            async with asyncio.timeout(self._timeout):
                current = await self._aws.get_parameter(region=notice.region, name=name)
                current_created = (
                    await store.ami_created(self._engine, region=notice.region, ami_id=current.value)
                    if current is not None
                    else None
                )
                moves = deliveries.ssm_moves(
                    notice, current_value=current.value if current else None, current_created=current_created,
                    modified=current.modified if current else None,
                )  # fmt: skip
                if moves:
                    assert notice.ami_id is not None
                    await self._aws.put_parameter(
                        region=notice.region, name=name, value=notice.ami_id,
                        description=f"statuscache: the AMI of {notice.image_id}, BUILD_COMPLETE (change {notice.seq})",
                    )  # fmt: skip
                    log.info("SSM parameter %s in %s now %s (%s)", name, notice.region, notice.ami_id, notice.image_id)
        except TimeoutError:
            return Answer(Verdict.RETRY, error=f"SSM did not answer within {self._timeout:g}s")
        except AwsError as exc:
            return Answer(Verdict.RETRY, error=f"{exc.operation}: {exc.code or type(exc).__name__}: {exc}")
        return Answer(Verdict.DELIVERED)

