"""A loop's sleep: the whole time when nobody stops it, no longer than it takes to be stopped."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.support.stopping import sleep_until_stopped

pytestmark = pytest.mark.asyncio


async def test_sleeps_the_whole_time_when_not_stopped() -> None:
    started = time.monotonic()

    stopped = await sleep_until_stopped(asyncio.Event(), 0.05)

    assert stopped is False
    assert time.monotonic() - started >= 0.045


async def test_wakes_as_soon_as_stopped() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stop.set)
    started = time.monotonic()

    stopped = await sleep_until_stopped(stop, 30)

    assert stopped is True
    assert time.monotonic() - started < 5


async def test_already_stopped_returns_at_once() -> None:
    stop = asyncio.Event()
    stop.set()

    assert await sleep_until_stopped(stop, 30) is True


async def test_zero_seconds_is_a_check() -> None:
    assert await sleep_until_stopped(asyncio.Event(), 0) is False


async def test_cancelling_the_sleeper_cancels_it() -> None:
    task = asyncio.create_task(sleep_until_stopped(asyncio.Event(), 30))
    await asyncio.sleep(0)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
