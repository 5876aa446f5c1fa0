"""A scripted fleet history whose truth is known: observations as the cache receives them, in arrival order.

Events carry AWS's time and arrive a couple of seconds later unless scripted late; reconciliation's
observations carry their own time. The changes go through the real `Cache.apply_many` (the rows and the
builds it writes are the service's own); only the arrival is scripted. `TRUTH` is what really happened.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from service.domain.models import (
    AmiInfo,
    AmiStatePatch,
    Change,
    ImagebuilderState,
    Observed,
    Source,
    StackInfo,
    StackStatusPatch,
)
from service.runtime import Runtime
from tests.conftest import REGION

ACCOUNT = "123456789012"
ROLLBACK = "The following resource(s) failed to create: [ParallelClusterImage]. Rollback requested by user."


def ib_failure(workflow: str) -> str:
    return (
        f"Image Build failed: Workflow Execution ID: 'wf-{workflow}' failed with reason: Step 'Build' failed. "
        "SSM execution '7f0e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b' failed"
    )


def _monday(moment: datetime) -> datetime:
    day = moment.replace(hour=9, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


# Three weeks back, on a Monday at 09:00 UTC: well inside the default retention, weeks line up.
T0 = _monday(datetime.now(UTC) - timedelta(days=21))


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(moment: datetime) -> str:
    """As the API prints times: UTC, milliseconds, Z."""
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass
class Script:
    changes: list[Change] = field(default_factory=list)
    stack_ids: dict[str, str] = field(default_factory=dict)
    ami_ids: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def _change(self, image_id: str, happened: float, observed: float | None, source: Source, **parts: Any) -> None:
        seen = at(observed) if observed is not None else at(happened) + timedelta(seconds=2)
        self.changes.append(
            Change(
                region=REGION, image_id=image_id, source=source, observed_at=seen,
                happened_at=at(happened) if source is Source.EVENT else None, **parts,
            )
        )

    def _tags(self, image_id: str) -> tuple[tuple[str, str], ...]:
        return (("parallelcluster:image_id", image_id), ("parallelcluster:version", self.versions[image_id]))

    def _stack(self, image_id: str, status: str, reason: str | None = None) -> StackInfo:
        return StackInfo(
            name=image_id, stack_id=self.stack_ids[image_id], status=status, status_reason=reason,
            creation_time=T0, tags=self._tags(image_id),
        )

    def started(self, image_id: str, minute: float, *, version: str, build: int = 1) -> Script:
        """The stack is created: the consumer's refresh of a new image brings the whole stack."""
        self.versions[image_id] = version
        self.stack_ids[image_id] = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{image_id}/{build}"
        stack = self._stack(image_id, "CREATE_IN_PROGRESS", "User Initiated")
        self._change(image_id, minute, None, Source.EVENT, stack=Observed(at(minute), stack))
        return self

    def stack(self, image_id: str, status: str, minute: float, *, reason: str | None = None,
              observed: float | None = None) -> Script:
        patch = StackStatusPatch(self.stack_ids[image_id], status, reason)
        self._change(image_id, minute, observed, Source.EVENT, stack_status=Observed(at(minute), patch))
        return self

    def imagebuilder(self, image_id: str, status: str, minute: float, *, reason: str | None = None,
                     observed: float | None = None) -> Script:
        state = ImagebuilderState(arn=f"arn:aws:imagebuilder:{REGION}:{ACCOUNT}:image/{image_id}", status=status,
                                  reason=reason)
        self._change(image_id, minute, observed, Source.EVENT, imagebuilder=Observed(at(minute), state))
        return self

    def ami(self, image_id: str, minute: float) -> Script:
        self.ami_ids[image_id] = "ami-" + hashlib.sha1(f"{image_id}/{minute}".encode()).hexdigest()[:17]
        ami = AmiInfo(
            ami_id=self.ami_ids[image_id], state="available",
            tags=(*self._tags(image_id), ("parallelcluster:build_status", "available")),
        )
        self._change(image_id, minute, None, Source.EVENT, ami=Observed(at(minute), ami))
        return self

    def deregistered(self, image_id: str, minute: float) -> Script:
        patch = AmiStatePatch(self.ami_ids[image_id], "deregistered")
        self._change(image_id, minute, None, Source.EVENT, ami_state=Observed(at(minute), patch))
        return self

    def reconciled(self, image_id: str, minute: float, *, stack_status: str | None,
                   imagebuilder: str | None = None, ami: bool = False) -> Script:
        """One reconcile pass's view of the image at `minute` (what it lists, as it is then)."""
        moment = at(minute)
        ami_info = None
        if ami:
            ami_info = AmiInfo(ami_id=self.ami_ids[image_id], state="available", tags=self._tags(image_id))
        state = ImagebuilderState(arn=f"arn:aws:imagebuilder:{REGION}:{ACCOUNT}:image/{image_id}",
                                  status=imagebuilder) if imagebuilder else None
        self._change(
            image_id, minute, minute, Source.RECONCILE,
            stack=Observed(moment, self._stack(image_id, stack_status) if stack_status else None),
            ami=Observed(moment, ami_info),
            imagebuilder=Observed(moment, state) if state else None,
        )
        return self

    async def apply(self, runtime: Runtime) -> None:
        await runtime.cache.apply_many(self.changes)
        await runtime.cache.derive_builds()  # what the runtime's loop does within a second


@dataclass(frozen=True)
class Truth:
    image_id: str
    start: float
    end: float | None
    outcome: str
    version: str
    end_exact: bool = True
    stack_reason: str | None = None
    imagebuilder_reason: str | None = None


WEEK = 7 * 24 * 60


def fleet() -> tuple[Script, list[Truth]]:
    """Nine images over two weeks, in the order their news reaches the cache."""
    s = Script()
    # alpha: a clean build, every event on time; later deleted, rebuilt the next week, and that build fails.
    s.started("alpha", 0, version="3.9.0").imagebuilder("alpha", "PENDING", 1).imagebuilder("alpha", "BUILDING", 3)
    s.imagebuilder("alpha", "TESTING", 40).imagebuilder("alpha", "DISTRIBUTING", 55)
    s.imagebuilder("alpha", "AVAILABLE", 60).stack("alpha", "CREATE_COMPLETE", 62).ami("alpha", 63)
    s.stack("alpha", "DELETE_COMPLETE", 90)
    # bravo: the stack's CREATE_COMPLETE arrives before Image Builder's TESTING and AVAILABLE.
    s.started("bravo", 10, version="3.9.0").imagebuilder("bravo", "PENDING", 11).imagebuilder("bravo", "BUILDING", 13)
    s.stack("bravo", "CREATE_COMPLETE", 80)
    s.imagebuilder("bravo", "TESTING", 50, observed=81).imagebuilder("bravo", "AVAILABLE", 78, observed=81)
    s.ami("bravo", 82)
    # charlie: fails; Image Builder's FAILED (and its reason) is learned after the stack began to roll back.
    s.started("charlie", 20, version="3.10.0").imagebuilder("charlie", "BUILDING", 22)
    s.stack("charlie", "ROLLBACK_IN_PROGRESS", 45, reason=ROLLBACK)
    s.imagebuilder("charlie", "FAILED", 44, reason=ib_failure("5c2d3f7a-91b4-4e0a-8d6f-2a7e9b1c4d08"), observed=47)
    s.stack("charlie", "ROLLBACK_COMPLETE", 50, reason=ROLLBACK)
    # delta: BUILDING's and TESTING's events are lost; only reconciliation (at minute 70) saw TESTING.
    s.started("delta", 30, version="3.10.0").imagebuilder("delta", "PENDING", 31)
    s.reconciled("delta", 70, stack_status="CREATE_IN_PROGRESS", imagebuilder="TESTING")
    s.imagebuilder("delta", "AVAILABLE", 85).stack("delta", "CREATE_COMPLETE", 88).ami("delta", 89)
    # echo: its CREATE_COMPLETE event (minute 97) is lost; the pass at 100 saw it (the one at 95 had not).
    s.started("echo", 40, version="3.9.0").imagebuilder("echo", "BUILDING", 42)
    s.reconciled("echo", 100, stack_status="CREATE_COMPLETE", imagebuilder="AVAILABLE")
    # foxtrot: deleted while building.
    s.started("foxtrot", 50, version="3.9.0").imagebuilder("foxtrot", "BUILDING", 52)
    s.stack("foxtrot", "DELETE_IN_PROGRESS", 60, reason="User Initiated").stack("foxtrot", "DELETE_COMPLETE", 65)
    # hotel: an AMI built before the service watched: first seen by reconciliation, never a build here.
    s.versions["hotel"] = "3.8.0"
    s.ami_ids["hotel"] = "ami-0000000000000hotel"
    s.stack_ids["hotel"] = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/hotel/0"
    s.reconciled("hotel", 5, stack_status=None, ami=True)
    # alpha again, the next week: deleted (AMI deregistered), rebuilt, fails to create.
    s.deregistered("alpha", WEEK - 60)
    s.started("alpha", WEEK, version="3.10.0", build=2).imagebuilder("alpha", "BUILDING", WEEK + 2)
    s.imagebuilder("alpha", "FAILED", WEEK + 29, reason=ib_failure("0b6a2d1e-7c3f-4a59-9e8d-1f2a3b4c5d6e"))
    s.stack("alpha", "CREATE_FAILED", WEEK + 30, reason=ROLLBACK)
    # golf: still building the next week.
    s.started("golf", WEEK + 100, version="3.10.0").imagebuilder("golf", "BUILDING", WEEK + 103)
    truth = [
        Truth("alpha", 0, 62, "complete", "3.9.0"),
        Truth("bravo", 10, 80, "complete", "3.9.0"),
        Truth("charlie", 20, 45, "failed", "3.10.0", stack_reason=ROLLBACK,
              imagebuilder_reason=ib_failure("5c2d3f7a-91b4-4e0a-8d6f-2a7e9b1c4d08")),
        Truth("delta", 30, 88, "complete", "3.10.0"),
        Truth("echo", 40, 97, "complete", "3.9.0", end_exact=False),
        Truth("foxtrot", 50, 60, "deleted", "3.9.0"),
        Truth("alpha", WEEK, WEEK + 30, "failed", "3.10.0", stack_reason=ROLLBACK,
              imagebuilder_reason=ib_failure("0b6a2d1e-7c3f-4a59-9e8d-1f2a3b4c5d6e")),
        Truth("golf", WEEK + 100, None, "in_progress", "3.10.0"),
    ]
    return s, truth
