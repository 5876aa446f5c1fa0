"""Miss storms: many concurrent requests for one uncached id, and many requests for distinct unknown ids."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import httpx

from bench.load import describe_path
from service.demo.fakeaws import FakeAws


@dataclass
class Answers:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    cache: collections.Counter[str] = field(default_factory=collections.Counter)
    malformed_429: int = 0
    seconds: float = 0.0
    # Requests that got no HTTP answer (connection reset, timeout): status 0 in `statuses`, first error kept.
    first_error: str | None = None


async def fire(base: str, paths: list[str], *, concurrency: int) -> Answers:
    """GET every path with up to `concurrency` requests in flight over as many warm connections."""
    answers = Answers()
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout, so a request never races its close.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as client:
        # Open the connections first, so the storm itself is requests, not TCP handshakes.
        await asyncio.gather(*(client.get("/healthz") for _ in range(concurrency)), return_exceptions=True)
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str) -> None:
            async with gate:
                try:
                    response = await client.get(path)
                except httpx.TransportError as exc:
                    answers.statuses[0] += 1
                    answers.first_error = answers.first_error or f"{type(exc).__name__}: {exc!r}"
                    return
            answers.statuses[response.status_code] += 1
            answers.cache[response.headers.get("x-cache", "-")] += 1
            if response.status_code == 429 and not _well_formed_429(response):
                answers.malformed_429 += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(path) for path in paths))
        answers.seconds = time.perf_counter() - started
    return answers


def _well_formed_429(response: httpx.Response) -> bool:
    retry_after = response.headers.get("retry-after", "")
    try:
        body = response.json()
    except ValueError:
        return False
    return retry_after.isdigit() and int(retry_after) >= 1 and isinstance(body, dict) and list(body) == ["message"]


@dataclass(frozen=True)
class OneIdStorm:
    requests: int
    live_lookups: int  # ec2.DescribeImages: the first call of every live lookup
    describe_stacks: int
    aws_calls: int
    statuses: dict[int, int]
    misses: int  # answers marked X-Cache: MISS, i.e. that waited on the one shared lookup
    seconds: float
    first_error: str | None


def one_id_storm(fake: FakeAws, *, base: str, image_id: str, requests: int = 500) -> OneIdStorm:
    """`requests` concurrent GETs for one id that AWS has and the cache does not."""
    fake.reset_calls()
    answers = asyncio.run(fire(base, [describe_path(image_id)] * requests, concurrency=requests))
    calls = fake.calls
    return OneIdStorm(
        requests=requests,
        live_lookups=calls["ec2.DescribeImages"],
        describe_stacks=calls["cloudformation.DescribeStacks"],
        aws_calls=sum(calls.values()),
        statuses=dict(answers.statuses),
        misses=answers.cache["MISS"],
        seconds=answers.seconds,
        first_error=answers.first_error,
    )


@dataclass(frozen=True)
class UnknownStorm:
    requests: int
    aws_calls: int
    live_lookups: int
    not_found: int
    throttled: int
    other: dict[int, int]
    malformed_429: int
    seconds: float
    rate: float
    first_error: str | None

    @property
    def lookup_bound(self) -> float:
        """The most lookups the budget admits: a burst of one second's worth, then `rate` per second."""
        return max(self.rate, 1.0) + self.rate * self.seconds


def unknown_ids_storm(
    fake: FakeAws, *, base: str, prefix: str, requests: int = 2000, concurrency: int = 64, rate: float = 20.0
) -> UnknownStorm:
    """`requests` GETs, each for a distinct valid id that neither AWS nor the cache knows."""
    fake.reset_calls()
    paths = [describe_path(f"{prefix}-{index:05d}") for index in range(requests)]
    answers = asyncio.run(fire(base, paths, concurrency=concurrency))
    calls = fake.calls
    return UnknownStorm(
        requests=requests,
        aws_calls=sum(calls.values()),
        live_lookups=calls["ec2.DescribeImages"],
        not_found=answers.statuses[404],
        throttled=answers.statuses[429],
        other={status: n for status, n in answers.statuses.items() if status not in (404, 429)},
        malformed_429=answers.malformed_429,
        seconds=answers.seconds,
        rate=rate,
        first_error=answers.first_error,
    )
