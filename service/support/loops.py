"""Background loops: a step does one unit of work and says when it wants to run again; `Loop` does the rest.

In the spirit of kopf's timers. A component writes its step (no `while`, no sleep, no backoff, no logging of
its failures) and hands it to a `Loop`, which runs it until `stop` is set:

- between steps it sleeps what the step asked for, ended early by `wake` (news) and at once by `stop`;
- after a failed step it backs off (doubling, bounded, with jitter) and tries again;
- it logs a line when it starts and when it stops, one warning line for a failure listed in `quiet` (an
  outage: expected, not a fault of this code), a traceback for anything else; it never swallows one;
- a step in hand when `stop` is set finishes (a step that must not start long waits watches `stop` itself).

`Loop.run_once` is one step of the loop, failure handling included: tests drive it instead of a private loop.
`Pauses` is the same backoff by key, for a step that stops asking about one part (a region) while it fails.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from service.support.stopping import sleep_until_stopped

log = logging.getLogger(__name__)

# One unit of work; returns the seconds it wants to wait before the next (0: at once).
Step = Callable[[], Awaitable[float]]
# Returns when there is news for the loop (it then runs its next step without waiting out the delay).
Wake = Callable[[], Awaitable[object]]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Backoff:
    """The wait after failures in a row: doubling from `initial`, never above `maximum`, and up to `jitter` (a
    fraction) shorter at random, so replicas that failed together do not all try again at the same moment."""

    initial: float
    maximum: float
    jitter: float = 0.2

    def delay(self, failures: int, *, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` failures in a row (`draw`: a number in [0, 1))."""
        # Capped before the power grows: thousands of failures in a long outage must not overflow.
        bounded = min(self.maximum, self.initial * 2.0 ** min(max(failures, 1) - 1, 32))
        return bounded * (1.0 - self.jitter * draw())


@dataclass
class Loop:
    """A step run until stopped: sleeping, waking, backing off and logging as the module docstring says."""

    name: str
    step: Step
    backoff: Backoff
    # Failures that are expected (outages): one warning line each, no traceback.
    quiet: tuple[type[Exception], ...] = ()
    wake: Wake | None = None
    # After each wait (news or not), this much longer before the next step: a burst of news is one step.
    settle_seconds: float = 0.0
    # What the start line says besides the name (the interval, the queues...).
    detail: str = ""
    # Failed steps in a row.
    failures: int = field(default=0, init=False)

    async def run_once(self) -> float:
        """One step; the seconds to wait before the next: the step's own, or after a failure (logged here) the
        backoff's."""
        try:
            seconds = await self.step()
        except Exception as exc:
            self.failures += 1
            delay = self.backoff.delay(self.failures)
            self._log_failure(exc, delay)
            return delay
        self.failures = 0
        return seconds

    async def run(self, *, stop: asyncio.Event) -> None:
        """Steps until `stop` is set; the step in hand when it is set finishes first."""
        log.info("%s started%s", self.name, f": {self.detail}" if self.detail else "")
        steps = 0
        try:
            while not stop.is_set():
                delay = await self.run_once()
                steps += 1
                if await self._wait(stop, delay):
                    break
        finally:
            log.info("%s stopped after %d steps", self.name, steps)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep `seconds`, less if woken, none once stopped (then True)."""
        waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
        if self.wake is not None:
            waiters.append(asyncio.ensure_future(self.wake()))
        try:
            await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if self.settle_seconds > 0:
            return await sleep_until_stopped(stop, self.settle_seconds)
        return stop.is_set()

    def _log_failure(self, error: Exception, delay: float) -> None:
        # A step that tried several parts (regions) raises a group of their failures, each noted with its part.
        failures = list(error.exceptions) if isinstance(error, ExceptionGroup) else [error]
        for failure in failures:
            notes = getattr(failure, "__notes__", None)
            where = f"{self.name} ({'; '.join(notes)})" if notes else self.name
            if isinstance(failure, self.quiet):
                log.warning("%s failed: %s; retrying in %.3gs", where, failure, delay)
            else:
                log.error("%s failed; retrying in %.3gs", where, delay, exc_info=failure)


class Pauses(Generic[K]):
    """Keys (regions) whose last try failed, each paused with its own backoff until a try works again: so a
    long outage costs a few probing tries, not one per item waiting."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._until: dict[K, datetime] = {}
        self._failures: dict[K, int] = {}

    def failed(self, key: K, *, now: datetime) -> None:
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        self._until[key] = now + timedelta(seconds=self._backoff.delay(failures))

    def succeeded(self, key: K) -> None:
        self._failures.pop(key, None)
        self._until.pop(key, None)

    def paused(self, *, now: datetime) -> set[K]:
        return {key for key, until in self._until.items() if until > now}

    def first_end(self, *, now: datetime) -> float | None:
        """Seconds until the first pause under way ends; None when nothing is paused."""
        ends = [(until - now).total_seconds() for until in self._until.values() if until > now]
        return min(ends, default=None)
