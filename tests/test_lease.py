"""Leases: one replica does the work only one may do; the parts of one process asking at once share its lease."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import pytest

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.store.lease import Leases, LockFiles
from tests.conftest import REGION, stored_images

pytestmark = pytest.mark.asyncio


async def test_parts_of_one_process_asking_at_once_both_hold_and_another_replica_does_not(settings: Settings) -> None:
    """On SQLite too: the workers of `serve --workers` share one SQLite file (a lock file per lease beside it)."""
    one, two = db.create_engine(settings), db.create_engine(settings)
    held: set[str] = set()
    mine, theirs = Leases(one, namespace="reconcile", held=held), Leases(two, namespace="reconcile")
    other_kind = Leases(two, namespace="notify")
    try:
        # The reconciler and evidence capture ask for the region's lease at the same moment, at start.
        assert await asyncio.gather(*(mine.holds(REGION) for _ in range(4))) == [True] * 4
        assert held == {REGION}
        assert await theirs.holds(REGION) is False
        # Another namespace's lease of the same name is another lease.
        assert await other_kind.holds(REGION) is True
        await mine.release_all()
        assert held == set()
        assert await theirs.holds(REGION) is True
        assert await mine.holds(REGION) is False
    finally:
        await mine.release_all()
        await theirs.release_all()
        await other_kind.release_all()
        await one.dispose()
        await two.dispose()


HOLDER = """
import asyncio, sys
from service.settings import Settings
from service.store import db
from service.store.lease import Leases, LockFiles

async def main() -> None:
    leases = Leases(db.create_engine(Settings(database_url=sys.argv[1])), namespace="poller")
    print(await leases.holds(sys.argv[2]), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_lease_whose_holder_dies_is_taken_over(settings: Settings) -> None:
    """The holder is killed (no release, no clean exit): its lease is free for the next process that asks."""
    engine = db.create_engine(settings)
    mine = Leases(engine, namespace="poller")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, settings.database_url, "a-host", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), timeout=30) == b"True\n"
        assert await mine.holds("a-host") is False
        holder.kill()
        await holder.wait()
        deadline = time.monotonic() + 10
        while not await mine.holds("a-host"):
            assert time.monotonic() < deadline, "the dead holder's lease was not freed"
            await asyncio.sleep(0.1)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await mine.release_all()
        await engine.dispose()


async def test_a_lease_file_is_named_after_its_lease_and_a_name_that_is_not_plain_is_digested(tmp_path: Path) -> None:
    files = LockFiles(tmp_path / "statuscache.db-leases", namespace="notify")
    assert files.path("us-east-1") == tmp_path / "statuscache.db-leases" / "notify.us-east-1"
    odd = files.path("../../etc/passwd")
    assert odd.parent == tmp_path / "statuscache.db-leases" and len(odd.name) == len("notify.") + 32


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
            assert REGION in runtime.metrics.reconcile_lease
