"""Builds derived from one image's transitions: edges from AWS's time, late and reordered rows, reconcile gaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.domain.builds import (
    COMPLETE,
    DELETED,
    FAILED,
    IN_PROGRESS,
    Build,
    Edge,
    Transition,
    derive,
    failure_key,
    failure_reason,
)

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ROLLBACK = "The following resource(s) failed to create: [ParallelClusterImage]. Rollback requested by user."
IB_FAILED = "Image Build failed: Step 'Build' failed with status = 'Failed' in state = 'BUILDING'"


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


class Rows:
    """Transition rows as apply writes them: each row the whole snapshot after one part changed."""

    def __init__(self) -> None:
        self.rows: list[Transition] = []
        self.state: dict[str, Any] = {
            "exists": True, "stack_status": None, "stack_status_reason": None, "imagebuilder_status": None,
            "imagebuilder_status_reason": None, "ami_state": None, "pcluster_version": "3.9.0",
        }

    def add(self, minutes: float, *, source: str = "event", observed: float | None = None, **changes: Any) -> Rows:
        self.state.update(changes)
        if self.state["stack_status"] in (None, "DELETE_COMPLETE"):
            # describe does not show a deleted stack, nor Image Builder without a stack
            self.state.update(stack_status=None, stack_status_reason=None, imagebuilder_status=None,
                              imagebuilder_status_reason=None)
        self.state["exists"] = self.state["stack_status"] is not None or self.state["ami_state"] is not None
        happened = at(minutes)
        seen = at(observed) if observed is not None else happened + timedelta(seconds=2)
        if source != "event":
            happened = seen
        self.rows.append(
            Transition(id=len(self.rows) + 1, happened_at=happened, observed_at=seen, source=source, **self.state)
        )
        return self


def successful(rows: Rows, start: float = 0) -> Rows:
    return (
        rows.add(start, stack_status="CREATE_IN_PROGRESS", stack_status_reason="User Initiated")
        .add(start + 1, imagebuilder_status="PENDING")
        .add(start + 3, imagebuilder_status="BUILDING")
        .add(start + 40, imagebuilder_status="TESTING")
        .add(start + 55, imagebuilder_status="DISTRIBUTING")
        .add(start + 60, imagebuilder_status="AVAILABLE")
        .add(start + 62, stack_status="CREATE_COMPLETE", stack_status_reason=None)
        .add(start + 63, ami_state="AVAILABLE")
        .add(start + 90, stack_status=None)
    )


def exact(minutes: float) -> Edge:
    return Edge(at=at(minutes), source="event", exact=True)


def test_a_build_seen_by_events_is_exact_with_its_phases() -> None:
    (build,) = derive(successful(Rows()).rows)

    assert build == Build(
        start=exact(0), end=exact(62), outcome=COMPLETE, version="3.9.0",
        phases=(("PENDING", 120.0), ("BUILDING", 37 * 60.0), ("TESTING", 15 * 60.0), ("DISTRIBUTING", 300.0),
                ("AVAILABLE", 120.0)),
    )
    assert build.duration_seconds == 62 * 60


def test_a_failed_build_carries_both_reasons_even_when_image_builder_speaks_last() -> None:
    rows = (
        Rows()
        .add(0, stack_status="CREATE_IN_PROGRESS", imagebuilder_status="BUILDING")
        .add(20, stack_status="ROLLBACK_IN_PROGRESS", stack_status_reason=ROLLBACK)
        # Image Builder's FAILED state (with its reason) is learned after the rollback began
        .add(19, imagebuilder_status="FAILED", imagebuilder_status_reason=IB_FAILED)
        .add(25, stack_status="ROLLBACK_COMPLETE")
        .add(30, stack_status="DELETE_IN_PROGRESS", stack_status_reason="User Initiated")
        .add(31, stack_status=None)
    )

    (build,) = derive(rows.rows)

    assert (build.outcome, build.start, build.end) == (FAILED, exact(0), exact(20))
    assert (build.stack_status_reason, build.imagebuilder_status_reason) == (ROLLBACK, IB_FAILED)
    assert failure_reason(build) == IB_FAILED
    assert build.phases == (("BUILDING", 19 * 60.0), ("FAILED", 60.0))


@pytest.mark.parametrize(
    ("rows", "outcome", "end"),
    [
        pytest.param(
            Rows().add(0, stack_status="CREATE_IN_PROGRESS").add(5, stack_status="DELETE_IN_PROGRESS"),
            DELETED, exact(5), id="stack-deleted-mid-build",
        ),
        pytest.param(
            Rows().add(0, stack_status="CREATE_IN_PROGRESS").add(5, stack_status=None), DELETED, exact(5),
            id="image-gone-mid-build",
        ),
        pytest.param(
            Rows().add(0, stack_status="CREATE_IN_PROGRESS").add(5, imagebuilder_status="BUILDING"),
            IN_PROGRESS, None, id="still-building",
        ),
        pytest.param(
            Rows().add(0, stack_status="CREATE_IN_PROGRESS").add(9, stack_status="CREATE_FAILED"),
            FAILED, exact(9), id="create-failed",
        ),
        pytest.param(
            Rows().add(0, stack_status="CREATE_IN_PROGRESS").add(9, ami_state="AVAILABLE"),
            COMPLETE, exact(9), id="ami-before-the-stack-completes",
        ),
    ],
)
def test_how_a_build_ends(rows: Rows, outcome: str, end: Edge | None) -> None:
    (build,) = derive(rows.rows)
    assert (build.start, build.outcome, build.end) == (exact(0), outcome, end)


def test_a_build_still_running_is_measured_to_the_last_thing_known() -> None:
    rows = Rows().add(0, stack_status="CREATE_IN_PROGRESS", imagebuilder_status="PENDING").add(
        4, imagebuilder_status="BUILDING"
    ).add(10, stack_status_reason="still going")
    (build,) = derive(rows.rows)
    assert build.end is None and build.duration_seconds is None
    assert build.phases == (("PENDING", 240.0), ("BUILDING", 360.0))


def test_an_image_rebuilt_under_the_same_id_has_one_build_per_run() -> None:
    rows = successful(Rows())
    rows.add(100, ami_state=None)  # the image is deleted: gone
    successful(rows, start=200)

    builds = derive(rows.rows)

    assert [(b.start.at, b.end.at if b.end else None, b.outcome) for b in builds] == [
        (at(0), at(62), COMPLETE), (at(200), at(262), COMPLETE)
    ]


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(Rows().add(0, ami_state="AVAILABLE"), id="an-ami-already-there"),
        pytest.param(Rows().add(0, stack_status="ROLLBACK_COMPLETE", stack_status_reason=ROLLBACK),
                     id="first-seen-failed"),
        pytest.param(Rows().add(0, stack_status="CREATE_COMPLETE").add(5, ami_state="AVAILABLE"),
                     id="first-seen-complete"),
        pytest.param(Rows(), id="no-rows"),
    ],
)
def test_a_run_never_seen_in_progress_is_not_a_build(rows: Rows) -> None:
    assert derive(rows.rows) == []


def test_rows_learned_out_of_time_order_are_replayed_by_aws_time() -> None:
    rows = (
        Rows()
        .add(0, stack_status="CREATE_IN_PROGRESS", imagebuilder_status="PENDING")
        .add(3, imagebuilder_status="BUILDING")
        # the stack's CREATE_COMPLETE is delivered before Image Builder's TESTING and AVAILABLE events
        .add(62, stack_status="CREATE_COMPLETE")
        .add(40, imagebuilder_status="TESTING")
        .add(60, imagebuilder_status="AVAILABLE")
    )

    (build,) = derive(rows.rows)

    assert (build.start, build.end, build.outcome) == (exact(0), exact(62), COMPLETE)
    assert build.phases == (("PENDING", 180.0), ("BUILDING", 37 * 60.0), ("TESTING", 20 * 60.0), ("AVAILABLE", 120.0))


def test_the_ami_learned_first_does_not_end_the_build_before_the_stack_did() -> None:
    rows = (
        Rows()
        .add(0, stack_status="CREATE_IN_PROGRESS")
        .add(70, ami_state="AVAILABLE")  # delivered first
        .add(62, stack_status="CREATE_COMPLETE")  # late
    )
    (build,) = derive(rows.rows)
    assert build.end == exact(62)


def test_an_edge_only_reconciliation_saw_is_inexact_with_its_bounds() -> None:
    rows = (
        Rows()
        .add(0, source="reconcile", observed=0, stack_status="CREATE_IN_PROGRESS", imagebuilder_status="BUILDING")
        .add(30, imagebuilder_status="TESTING")
        # the stack's completion event was lost; the next pass saw it
        .add(0, source="reconcile", observed=65, stack_status="CREATE_COMPLETE")
    )

    (build,) = derive(rows.rows)

    assert build.start == Edge(at=at(0), source="reconcile", exact=False, after=None)
    assert build.end == Edge(at=at(65), source="reconcile", exact=False, after=at(30) + timedelta(seconds=2))


def test_a_middle_only_reconciliation_saw_keeps_exact_edges() -> None:
    rows = (
        Rows()
        .add(0, stack_status="CREATE_IN_PROGRESS", imagebuilder_status="PENDING")
        # BUILDING's and TESTING's events were lost: reconciliation saw TESTING at minute 45
        .add(0, source="reconcile", observed=45, imagebuilder_status="TESTING")
        .add(55, imagebuilder_status="AVAILABLE")
        .add(62, stack_status="CREATE_COMPLETE")
    )

    (build,) = derive(rows.rows)

    assert (build.start, build.end) == (exact(0), exact(62))
    assert build.phases == (("PENDING", 45 * 60.0), ("TESTING", 10 * 60.0), ("AVAILABLE", 7 * 60.0))


def test_a_time_running_backwards_within_a_part_is_held_and_marked_inexact() -> None:
    rows = (
        Rows()
        .add(0, source="reconcile", observed=10, stack_status="CREATE_IN_PROGRESS")
        # a refresh stamped with an older event's time says the stack completed "before" it was seen building
        .add(5, stack_status="CREATE_COMPLETE")
    )

    (build,) = derive(rows.rows)

    assert build.end is not None and build.end.at == at(10) and not build.end.exact
    assert build.duration_seconds == 0


def test_rows_that_change_no_status_change_no_build() -> None:
    plain = successful(Rows()).rows
    rows = Rows()
    successful(rows)
    doubled = [*rows.rows[:3], rows.rows[2].__class__(**{**rows.rows[2].__dict__, "id": 99}), *rows.rows[3:]]
    assert derive(doubled) == derive(plain)


@pytest.mark.parametrize(
    ("reason", "key"),
    [
        (
            "Image Build failed: Workflow Execution ID: 'wf-5c2d3f7a-91b4-4e0a-8d6f-2a7e9b1c4d08' failed with "
            "reason: SSM execution '7f0e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b' failed",
            "Image Build failed: Workflow Execution ID: 'wf-<id>' failed with reason: SSM execution '<id>' failed",
        ),
        (
            "Document arn:aws:imagebuilder:us-east-1:123456789012:component/parallelclusterimage-my-img/3.9.0/1 "
            "failed!",
            "Document arn:aws:imagebuilder:us-east-1:<account>:component/parallelclusterimage-<image>/3.9.0/1 failed!",
        ),
        ("Instance i-0abc12345def67890 terminated at 2026-03-02T09:00:00Z", "Instance <id> terminated at <time>"),
        (ROLLBACK, ROLLBACK),
    ],
)
def test_failure_keys_group_the_same_failure(reason: str, key: str) -> None:
    assert failure_key(reason, image_id="My-Img") == key
