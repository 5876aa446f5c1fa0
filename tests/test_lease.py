"""Leases: one replica does the work only one may do; the parts of one process asking at once share its lease."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.store.lease import Leases
from tests.conftest import REGION, stored_images

pytestmark = pytest.mark.asyncio


async def test_parts_of_one_process_asking_at_once_both_hold_and_another_replica_does_not(settings: Settings) -> None:
    one, two = db.create_engine(settings), db.create_engine(settings)
    held: set[str] = set()
    mine, theirs = Leases(one, namespace="reconcile", held=held), Leases(two, namespace="reconcile")
    try:
        # The reconciler and evidence capture ask for the region's lease at the same moment, at start.
        assert await asyncio.gather(*(mine.holds(REGION) for _ in range(4))) == [True] * 4
        shared = settings.database_url.startswith("postgresql")
        assert held == ({REGION} if shared else set())
        assert await theirs.holds(REGION) is not shared
        await mine.release_all()
        assert held == set()
        assert await theirs.holds(REGION) is True
    finally:
        await mine.release_all()
        await theirs.release_all()
        await one.dispose()
        await two.dispose()


async def test_the_first_reconcile_runs_at_start_beside_the_evidence_capture(
    settings: Settings, aws_state: FakeAws
) -> None:
    """Both loops gate on the region's lease as the process starts: the reconciler must not lose the race and wait
    out a whole resync interval (it did, on PostgreSQL: a second session found the first one's lock)."""
    aws_state.create_ami(region=REGION, image_id="at-start")
    tuned = dataclasses.replace(settings, regions=(REGION,), resync_seconds=600.0)
    for _ in range(3):
        async with Runtime.open(tuned, poll=True) as runtime:
            deadline = time.monotonic() + 10
            # This process's own pass (the resync interval is 10 minutes: only the one at start can count).
            while runtime.metrics.reconcile_region_passes[(REGION, "ok")] < 1:
                assert time.monotonic() < deadline, "the first reconcile did not run at start"
                await asyncio.sleep(0.05)
            assert await stored_images(runtime) >= 1
            assert REGION in runtime.metrics.reconcile_lease or settings.is_sqlite
