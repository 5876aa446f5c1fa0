"""Stoppable waits: a loop sleeps between rounds, and wakes at once when asked to stop."""

from __future__ import annotations

import asyncio


async def sleep_until_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, or less if `stop` is set meanwhile. True when stopped (the caller should return)."""
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return stop.is_set()
    return True
