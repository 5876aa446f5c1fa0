"""The live-lookup budget: a token bucket with a burst of one second's worth, refilled at `rate` per second."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.demo.fakeaws import FakeAws
from service.ingest.lookup import Lookup, TokenBucket
from service.metrics import LOOKUP_BUDGET, LOOKUP_CALLER_BUDGET
from service.runtime import Runtime
from tests.conftest import REGION


class Clock:
    def __init__(self, now: float = 5_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def take_all(bucket: TokenBucket) -> int:
    """Tokens granted right now before the first refusal."""
    taken = 0
    while bucket.take() == 0.0:
        taken += 1
        assert taken < 10_000
    return taken


@pytest.mark.parametrize(("rate", "burst"), [(1.0, 1), (5.0, 5), (20.0, 20), (1000.0, 1000), (2.5, 2), (0.5, 1)])
def test_a_full_bucket_allows_a_burst_of_rate_tokens_then_refuses(rate: float, burst: int) -> None:
    bucket = TokenBucket(rate=rate, clock=Clock())

    assert take_all(bucket) == burst


@pytest.mark.parametrize(
    ("rate", "wait"),
    [(1.0, 1.0), (5.0, 0.2), (20.0, 0.05), (0.5, 2.0), (2.5, 0.2)],  # 2.5: half a token is left after the burst
)
def test_refusal_says_how_long_until_the_next_token(rate: float, wait: float) -> None:
    bucket = TokenBucket(rate=rate, clock=Clock())
    take_all(bucket)

    refused = bucket.take()

    assert refused > 0
    assert refused == pytest.approx(wait)


@pytest.mark.parametrize("rate", [1.0, 5.0, 20.0, 0.5])
def test_a_token_is_available_once_the_announced_wait_has_passed(rate: float) -> None:
    clock = Clock()
    bucket = TokenBucket(rate=rate, clock=clock)
    take_all(bucket)
    wait = bucket.take()

    clock.now += wait * 0.9
    assert 0 < bucket.take() == pytest.approx(wait * 0.1)
    clock.now += wait * 0.1 + 1e-9
    assert bucket.take() == 0.0
    assert bucket.take() > 0


@pytest.mark.parametrize(
    ("rate", "idle", "granted"),
    [
        pytest.param(10.0, 0.0, 0, id="no-time-no-tokens"),
        pytest.param(10.0, 0.35, 3, id="partial-refill"),
        pytest.param(10.0, 1.0, 10, id="one-second-refills-the-burst"),
        pytest.param(10.0, 3600.0, 10, id="never-more-than-the-burst"),
        pytest.param(0.5, 1.0, 0, id="slow-rate-half-a-token"),
        pytest.param(0.5, 2.0, 1, id="slow-rate-one-token"),
        pytest.param(0.5, 60.0, 1, id="slow-rate-capacity-one"),
    ],
)
def test_the_bucket_refills_over_time_up_to_its_burst(rate: float, idle: float, granted: int) -> None:
    clock = Clock()
    bucket = TokenBucket(rate=rate, clock=clock)
    take_all(bucket)

    clock.now += idle

    assert take_all(bucket) == granted


def test_refusals_do_not_use_up_tokens() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=4.0, clock=clock)
    take_all(bucket)

    waits = []
    for _ in range(5):
        waits.append(bucket.take())
        clock.now += 0.05

    assert waits == pytest.approx([0.25, 0.2, 0.15, 0.1, 0.05])
    assert bucket.take() == 0.0


def test_a_steady_rate_is_served_indefinitely() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, clock=clock)
    take_all(bucket)

    granted = 0
    for _ in range(1000):  # 100 s at exactly the budgeted rate, plus a hair for float error
        clock.now += 0.1 + 1e-9
        granted += bucket.take() == 0.0

    assert granted == 1000


# --- fairness across callers ---------------------------------------------------------------------


def client_from(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://statuscache")


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_flood_of_unknown_ids_from_one_caller_leaves_others_their_first_lookups(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    settings = dataclasses.replace(
        runtime.settings, live_lookups_per_second=20.0, live_lookups_per_caller_per_second=5.0
    )
    # Time stands still: no token comes back during the test, however slow the lookups are.
    runtime.lookup = Lookup(
        cache=runtime.cache, aws=runtime.aws, settings=settings, metrics=runtime.metrics, clock=Clock()
    )
    for index in range(5):
        aws_state.create_image_stack(region=REGION, image_id=f"real-new-{index}")
    app = create_app(runtime.settings, runtime=runtime)

    async with client_from(app, "203.0.113.7") as flooder, client_from(app, "198.51.100.2") as user:
        flood = await asyncio.gather(*(flooder.get(f"/v3/images/custom/no-such-{index}") for index in range(60)))
        firsts = [await user.get(f"/v3/images/custom/real-new-{index}") for index in range(5)]

    assert [response.status_code for response in firsts] == [200] * 5
    refused = [response for response in flood if response.status_code == 429]
    assert len(refused) == 55  # the flooder got its share (5), not the region's 20
    assert all(int(response.headers["retry-after"]) >= 1 and "message" in response.json() for response in refused)
    assert runtime.metrics.lookups[LOOKUP_CALLER_BUDGET] == 55


@pytest.mark.slow
@pytest.mark.asyncio
async def test_many_callers_together_are_still_held_to_the_regions_budget(
    runtime: Runtime, aws_state: FakeAws
) -> None:
    settings = dataclasses.replace(
        runtime.settings, live_lookups_per_second=8.0, live_lookups_per_caller_per_second=5.0
    )
    runtime.lookup = Lookup(
        cache=runtime.cache, aws=runtime.aws, settings=settings, metrics=runtime.metrics, clock=Clock()
    )
    app = create_app(runtime.settings, runtime=runtime)
    answers: list[int] = []
    for number, address in enumerate(("192.0.2.1", "192.0.2.2", "192.0.2.3")):
        async with client_from(app, address) as caller:
            for index in range(5):
                answers.append((await caller.get(f"/v3/images/custom/caller{number}-x{index}")).status_code)

    # Each caller stays within its share, yet together they get no more than the region's budget (8).
    assert answers == [404] * 8 + [429] * 7
    assert runtime.metrics.lookups[LOOKUP_BUDGET] == 7
    assert runtime.metrics.lookups[LOOKUP_CALLER_BUDGET] == 0
