"""What a process runs in the background: everything at once on its own; as a worker of `serve --workers`, only once
elected by the host's poller lease, and then everything a single process runs."""

from __future__ import annotations

import dataclasses
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from service.demo.fakeaws import FakeAws
from service.runtime import ELECTION_SECONDS, Runtime
from service.settings import Settings
from service.support.workers import Worker
from tests.conftest import REGION
from tests.test_exposition import Queue
from tests.test_notify import until

pytestmark = pytest.mark.asyncio

# What a single `serve` runs beside the API (the build derivation runs in every process, elected or not).
BACKGROUND = {"reconciler", "event receiver", "pruner", "evidence capture", "rechecker"}


def loops(runtime: Runtime) -> set[str]:
    """Which of BACKGROUND run in `runtime` ("event receiver 1 of <queue>" is an event receiver)."""
    running = [task.get_name() for task in runtime.tasks if not task.done()]
    return {kind for kind in BACKGROUND if any(name.startswith(kind) for name in running)}


def polling(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, regions=(REGION,), resync_seconds=600.0, events_queue_urls=(Queue().url,), events_receivers=1
    )


async def test_a_process_of_its_own_does_the_background_work_at_once(settings: Settings, aws_state: FakeAws) -> None:
    async with Runtime.open(polling(settings), poll=True) as runtime:
        assert runtime.polling and loops(runtime) == BACKGROUND
        assert runtime.metrics.poller_lease == set()


@pytest.mark.slow
async def test_one_worker_of_a_host_does_the_background_work_and_another_takes_over(
    settings: Settings, aws_state: FakeAws, tmp_path: Path
) -> None:
    tuned = polling(settings)
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(Runtime.open(tuned, poll=True, worker=Worker(number, 2, tmp_path)))
            for number in (1, 2)
        ]
        await until(lambda: any(worker.polling for worker in workers))
        holder, other = workers if workers[0].polling else reversed(workers)
        assert loops(holder) == BACKGROUND
        assert holder.metrics.poller_lease == {socket.gethostname()}
        assert not other.polling and loops(other) == set() and other.metrics.poller_lease == set()

        # The holder stops (SIGTERM, or a crash): the other, asking every ELECTION_SECONDS, takes the work over.
        await holder.close()
        await until(lambda: other.polling, seconds=ELECTION_SECONDS + 10)
        assert loops(other) == BACKGROUND
        await until(lambda: other.metrics.reconcile_region_passes[(REGION, "ok")] >= 1)
