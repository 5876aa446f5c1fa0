"""The loop supervisor: steps say when to run next; backoff grows, is bounded and jittered; stop wakes at once;
failures are logged (one line when expected, a traceback when not) and retried, never swallowed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from datetime import UTC, datetime, timedelta

import pytest

from service.support.loops import Backoff, Loop, Pauses

LOGGER = "service.support.loops"


class Expected(Exception):
    pass


class Runs(list[float]):
    """When (event loop time) a step ran, each time; `reached(n)` waits for the n-th run."""

    def __init__(self) -> None:
        super().__init__()
        self._ran = asyncio.Event()

    def record(self) -> None:
        self.append(asyncio.get_running_loop().time())
        self._ran.set()

    async def reached(self, count: int) -> None:
        while len(self) < count:
            self._ran.clear()
            await asyncio.wait_for(self._ran.wait(), timeout=5)


def counting_step(
    delays: list[float], *, failures: int = 0, error: Exception | None = None
) -> tuple[Runs, Loop]:
    """A loop whose step records when it ran, fails its first `failures` times, then asks for `delays` in turn
    (the last one from then on)."""
    ran = Runs()

    async def step() -> float:
        ran.record()
        if len(ran) <= failures:
            raise error or Expected("no answer")
        return delays[min(len(ran) - failures, len(delays)) - 1]

    return ran, Loop(name="counter", step=step, backoff=Backoff(0.05, 0.2), quiet=(Expected,))


@pytest.mark.parametrize(
    ("failures", "seconds"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (10_000, 8.0)]
)
def test_backoff_doubles_from_initial_and_is_bounded(failures: int, seconds: float) -> None:
    assert Backoff(1.0, 8.0, jitter=0.0).delay(failures) == seconds


def test_backoff_jitter_only_shortens_within_its_fraction() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.25)
    draws = random.Random(16)

    delays = [backoff.delay(4, draw=draws.random) for _ in range(200)]

    assert all(6.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 100, "replicas failing together would retry together"
    assert backoff.delay(2, draw=lambda: 0.0) == 2.0 and backoff.delay(2, draw=lambda: 0.5) == 1.75


@pytest.mark.asyncio
async def test_a_step_is_run_and_its_requested_delay_honoured() -> None:
    ran, loop = counting_step([0.2])
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop=stop))
    await ran.reached(3)
    stop.set()
    await asyncio.wait_for(task, timeout=1)

    gaps = [later - earlier for earlier, later in itertools.pairwise(ran)]
    assert all(0.2 <= gap < 0.4 for gap in gaps[:2]), gaps


@pytest.mark.asyncio
async def test_a_step_asking_for_no_delay_runs_again_at_once() -> None:
    ran, loop = counting_step([0.0, 0.0, 30.0])
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop=stop))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, timeout=1)

    assert len(ran) == 3 and ran[-1] - ran[0] < 0.05


@pytest.mark.asyncio
async def test_stop_wakes_a_sleeping_loop_at_once(caplog: pytest.LogCaptureFixture) -> None:
    ran, loop = counting_step([3600.0])
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        task = asyncio.create_task(loop.run(stop=stop))
        await ran.reached(1)
        stopped = asyncio.get_running_loop().time()
        stop.set()
        await asyncio.wait_for(task, timeout=1)

    assert asyncio.get_running_loop().time() - stopped < 0.1
    assert [record.getMessage() for record in caplog.records] == ["counter started", "counter stopped after 1 steps"]


@pytest.mark.asyncio
async def test_a_loop_stopped_before_it_starts_runs_no_step() -> None:
    ran, loop = counting_step([1.0])
    stop = asyncio.Event()
    stop.set()

    await asyncio.wait_for(loop.run(stop=stop), timeout=1)

    assert ran == []


@pytest.mark.asyncio
async def test_the_step_in_hand_when_stopped_finishes() -> None:
    finished = asyncio.Event()
    stop = asyncio.Event()

    async def step() -> float:
        stop.set()  # shutdown begins while the step works
        await asyncio.sleep(0.05)
        finished.set()
        return 60.0

    await asyncio.wait_for(Loop(name="batch", step=step, backoff=Backoff(1.0, 1.0)).run(stop=stop), timeout=1)

    assert finished.is_set()


@pytest.mark.asyncio
async def test_an_expected_failure_is_one_warning_line_and_retried_after_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran, loop = counting_step([60.0], failures=2)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = await loop.run_once()
        second = await loop.run_once()
        third = await loop.run_once()

    assert len(ran) == 3
    assert 0.04 <= first <= 0.05 and 0.08 <= second <= 0.1
    assert third == 60.0 and loop.failures == 0
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage().split(";")[0] for record in warnings] == ["counter failed: no answer"] * 2
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.asyncio
async def test_an_unexpected_failure_is_logged_with_its_traceback_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran, loop = counting_step([60.0], failures=1, error=KeyError("bug"))
    stop = asyncio.Event()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        task = asyncio.create_task(loop.run(stop=stop))
        await ran.reached(2)
        stop.set()
        await asyncio.wait_for(task, timeout=1)

    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith("counter failed; retrying in")
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], KeyError)
    assert ran[1] - ran[0] >= 0.04  # retried after the backoff


@pytest.mark.asyncio
async def test_each_failed_part_of_a_step_is_logged_with_its_note(caplog: pytest.LogCaptureFixture) -> None:
    async def step() -> float:
        failures: list[Exception] = []
        for region, error in (("us-east-1", Expected("throttled")), ("eu-west-1", ValueError("bug"))):
            error.add_note(f"pass for {region}")
            failures.append(error)
        raise ExceptionGroup("passes failed", failures)

    loop = Loop(name="reconciler", step=step, backoff=Backoff(1.0, 1.0, jitter=0.0), quiet=(Expected,))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await loop.run_once() == 1.0

    messages = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert messages == [
        (logging.WARNING, "reconciler (pass for us-east-1) failed: throttled; retrying in 1s"),
        (logging.ERROR, "reconciler (pass for eu-west-1) failed; retrying in 1s"),
    ]
    assert isinstance(caplog.records[1].exc_info and caplog.records[1].exc_info[1], ValueError)


@pytest.mark.asyncio
async def test_cancelling_a_step_is_not_a_failure() -> None:
    started = asyncio.Event()

    async def step() -> float:
        started.set()
        await asyncio.sleep(60)
        return 1.0

    loop = Loop(name="cancelled", step=step, backoff=Backoff(1.0, 1.0))
    task = asyncio.create_task(loop.run(stop=asyncio.Event()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert loop.failures == 0


@pytest.mark.asyncio
async def test_wake_ends_the_wait_early_and_settle_gathers_a_burst() -> None:
    news = asyncio.Event()
    ran = Runs()

    async def step() -> float:
        news.clear()
        ran.record()
        return 60.0

    loop = Loop(name="woken", step=step, backoff=Backoff(1.0, 1.0), wake=news.wait, settle_seconds=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop=stop))
    await ran.reached(1)
    woken = asyncio.get_running_loop().time()
    news.set()
    await ran.reached(2)
    stop.set()
    await asyncio.wait_for(task, timeout=1)

    assert 0.1 <= ran[1] - woken < 0.5


def test_pauses_grow_per_key_and_end_when_a_try_works() -> None:
    pauses: Pauses[str] = Pauses(Backoff(1.0, 4.0, jitter=0.0))
    now = datetime(2026, 1, 1, tzinfo=UTC)

    pauses.failed("us-east-1", now=now)
    pauses.failed("us-east-1", now=now)
    pauses.failed("eu-west-1", now=now)

    assert pauses.paused(now=now) == {"us-east-1", "eu-west-1"}
    assert pauses.first_end(now=now) == 1.0
    assert pauses.paused(now=now + timedelta(seconds=1.5)) == {"us-east-1"}
    pauses.succeeded("us-east-1")
    assert pauses.paused(now=now) == {"eu-west-1"}
    assert pauses.first_end(now=now + timedelta(seconds=5)) is None
