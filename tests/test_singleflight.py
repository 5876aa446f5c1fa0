"""One in-flight task per key: joined while running, shielded from impatient callers, forgotten when done."""

from __future__ import annotations

import asyncio

import pytest

from service.support.singleflight import SingleFlight

pytestmark = pytest.mark.asyncio


class Work:
    """Work that waits for `release` and counts how often it was started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.started += 1
        await self.release.wait()
        return self.started


async def test_concurrent_calls_for_one_key_share_one_run() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    work = Work()
    callers = [asyncio.create_task(flights.run("a", work)) for _ in range(10)]
    await asyncio.sleep(0)
    assert "a" in flights

    work.release.set()

    assert await asyncio.gather(*callers) == [1] * 10
    assert work.started == 1


async def test_different_keys_run_separately() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    first, second = Work(), Work()
    first.release.set()
    second.release.set()

    await asyncio.gather(flights.run("a", first), flights.run("b", second))

    assert (first.started, second.started) == (1, 1)


async def test_the_key_is_forgotten_when_the_work_is_done() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    work = Work()
    work.release.set()

    assert await flights.run("a", work) == 1
    await asyncio.sleep(0)
    assert "a" not in flights
    assert await flights.run("a", work) == 2


async def test_one_caller_giving_up_does_not_cancel_the_work_for_the_others() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    work = Work()
    impatient = asyncio.create_task(flights.run("a", work))
    patient = asyncio.create_task(flights.run("a", work))
    await asyncio.sleep(0)

    impatient.cancel()
    await asyncio.sleep(0)
    work.release.set()

    assert await patient == 1
    assert impatient.cancelled()


async def test_every_waiter_gets_the_failure_and_the_next_call_starts_afresh() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    attempts = 0

    async def failing() -> int:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0)
        raise RuntimeError("no answer")

    results = await asyncio.gather(*(flights.run("a", failing) for _ in range(3)), return_exceptions=True)

    assert [type(result) for result in results] == [RuntimeError] * 3
    assert attempts == 1
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await flights.run("a", failing)
    assert attempts == 2


async def test_work_nobody_waits_for_any_more_still_finishes_quietly() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    finished = asyncio.Event()

    async def failing() -> int:
        await asyncio.sleep(0.01)
        finished.set()
        raise RuntimeError("nobody is listening")

    caller = asyncio.create_task(flights.run("a", failing))
    await asyncio.sleep(0)
    caller.cancel()
    await finished.wait()
    await asyncio.sleep(0)

    assert "a" not in flights
