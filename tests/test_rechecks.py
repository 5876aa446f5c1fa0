"""Rechecks, decided purely: what leaves one owed, what settles it, how rows merge, the backoff."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.domain.models import (
    PART_CONFIG,
    PART_IMAGEBUILDER,
    AmiStatePatch,
    Change,
    Observed,
    Source,
    StackStatusPatch,
)
from service.domain.rechecks import (
    KIND_AMI,
    KIND_IMAGE,
    Recheck,
    combined_news,
    decode_news,
    encode_news,
    news,
    recheck_for,
    retry_delay,
    row_after,
    settled_by_time,
    settles,
    supersedes,
)

REGION = "us-east-1"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EARLIER = T0 - timedelta(seconds=5)
LATER = T0 + timedelta(seconds=5)
FIRST_TRY = T0 + timedelta(seconds=1)


def change(
    *, source: Source = Source.LIVE, at: datetime = T0, unknown: frozenset[str] = frozenset(), whole: bool = True,
    happened: datetime | None = None,
) -> Change:
    return Change(
        region=REGION, image_id="img", source=source, observed_at=at, unknown=unknown, whole=whole,
        happened_at=happened,
    )


def stored(*, requested: datetime = T0, source: str = "live", happened: datetime | None = None) -> dict[str, Any]:
    return {
        "region": REGION, "kind": KIND_IMAGE, "subject": "img", "requested_at": requested, "happened_at": happened,
        "source": source, "reason": "could not read imagebuilder", "attempts": 3, "due_at": LATER, "last_error": "x",
    }


@pytest.mark.parametrize(
    ("incoming", "owed"),
    [
        pytest.param(change(), None, id="whole-and-known"),
        pytest.param(change(whole=False), None, id="event-patch"),
        pytest.param(
            change(unknown=frozenset({PART_IMAGEBUILDER})),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.LIVE, "could not read imagebuilder"),
            id="image-builder-unknown",
        ),
        pytest.param(
            change(source=Source.RECONCILE, unknown=frozenset({PART_CONFIG, PART_IMAGEBUILDER})),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.RECONCILE, "could not read config, imagebuilder"),
            id="two-parts-unknown",
        ),
        pytest.param(
            change(source=Source.EVENT, unknown=frozenset({PART_CONFIG}), happened=EARLIER),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.EVENT, "could not read config", happened_at=EARLIER),
            id="refresh-keeps-the-event-time",
        ),
    ],
)
def test_a_change_that_could_not_read_a_part_leaves_a_recheck_owed(incoming: Change, owed: Recheck | None) -> None:
    assert recheck_for(incoming) == owed


@pytest.mark.parametrize(
    ("row", "incoming", "settled"),
    [
        pytest.param(None, change(), False, id="nothing-owed"),
        pytest.param(stored(), change(at=T0), True, id="whole-look-as-old-as-the-recheck"),
        pytest.param(stored(), change(at=LATER), True, id="whole-look-after-the-recheck"),
        pytest.param(stored(), change(at=EARLIER), False, id="look-began-before-the-recheck"),
        pytest.param(stored(), change(at=LATER, whole=False), False, id="an-event-patch-is-not-a-look"),
        pytest.param(stored(), change(at=LATER, unknown=frozenset({PART_CONFIG})), False, id="still-a-part-unknown"),
    ],
)
def test_only_a_whole_complete_look_begun_after_the_need_settles_it(
    row: dict[str, Any] | None, incoming: Change, settled: bool
) -> None:
    assert settles(row, incoming) is settled


@pytest.mark.parametrize(
    ("row", "looked_at", "settled"),
    [
        pytest.param(None, T0, False, id="nothing-owed"),
        pytest.param(stored(), EARLIER, False, id="looked-before"),
        pytest.param(stored(), T0, True, id="looked-then"),
        pytest.param(stored(), LATER, True, id="looked-after"),
    ],
)
def test_a_look_that_found_nothing_to_store_settles_by_its_time(
    row: dict[str, Any] | None, looked_at: datetime, settled: bool
) -> None:
    assert settled_by_time(row, looked_at) is settled


def test_a_new_need_is_first_tried_after_the_initial_wait() -> None:
    recheck = Recheck(REGION, KIND_AMI, "ami-1", T0, Source.EVENT, "event e-1: Throttling", happened_at=EARLIER)

    row = row_after(None, recheck, first_try_at=FIRST_TRY)

    assert row == {
        "region": REGION, "kind": KIND_AMI, "subject": "ami-1", "requested_at": T0, "happened_at": EARLIER,
        "source": "event", "reason": "event e-1: Throttling", "attempts": 0, "due_at": FIRST_TRY, "last_error": None,
    }


@pytest.mark.parametrize(
    ("row", "recheck", "expected"),
    [
        pytest.param(
            stored(requested=EARLIER),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.LIVE, "could not read config"),
            {"requested_at": T0, "happened_at": None, "source": "live", "reason": "could not read config"},
            id="later-request-wins",
        ),
        pytest.param(
            stored(requested=LATER),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.LIVE, "r"),
            {"requested_at": LATER, "happened_at": None, "source": "live", "reason": "r"},
            id="earlier-request-does-not-move-it-back",
        ),
        pytest.param(
            stored(source="event", happened=EARLIER),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.RECONCILE, "r"),
            {"requested_at": T0, "happened_at": EARLIER, "source": "event", "reason": "r"},
            id="an-events-recheck-stays-the-events",
        ),
        pytest.param(
            stored(source="live", happened=EARLIER),
            Recheck(REGION, KIND_IMAGE, "img", T0, Source.EVENT, "r", happened_at=LATER),
            {"requested_at": T0, "happened_at": LATER, "source": "event", "reason": "r"},
            id="the-latest-event-time-wins",
        ),
    ],
)
def test_a_need_joins_the_stored_one_keeping_its_schedule(
    row: dict[str, Any], recheck: Recheck, expected: dict[str, Any]
) -> None:
    merged = row_after(row, recheck, first_try_at=FIRST_TRY)

    assert {key: merged[key] for key in expected} == expected
    # News during an outage does not reset the backoff.
    assert (merged["attempts"], merged["due_at"], merged["last_error"]) == (3, LATER, "x")


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 15.0), (6, 15.0), (10_000, 15.0)],
)
def test_retries_double_up_to_the_maximum(attempts: int, delay: float) -> None:
    assert retry_delay(attempts, initial=1.0, maximum=15.0) == delay


# --- an event's news, waiting for its image ----------------------------------------------------------


def test_news_keeps_per_part_the_newer_and_round_trips_through_its_json() -> None:
    t0 = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)
    first = Change(
        region="us-east-1", image_id="img", source=Source.EVENT, observed_at=t0 + timedelta(seconds=2), happened_at=t0,
        stack_status=Observed(t0, StackStatusPatch("stack-1", "CREATE_IN_PROGRESS", "User Initiated")),
    )
    second = Change(
        region="us-east-1", image_id="img", source=Source.EVENT, observed_at=t0 + timedelta(seconds=1),
        happened_at=t0 + timedelta(seconds=30),
        stack_status=Observed(t0 - timedelta(seconds=5), StackStatusPatch("stack-1", "ROLLBACK", None)),
        ami_state=Observed(t0 + timedelta(seconds=30), AmiStatePatch("ami-1", "available")),
    )
    held = combined_news(news(first), second)
    # The stack's older news loses to the newer, the AMI's is added; the later event time and hearing win.
    assert held.stack_status == first.stack_status
    assert held.ami_state == second.ami_state
    assert held.happened_at == t0 + timedelta(seconds=30) and held.observed_at == t0 + timedelta(seconds=2)
    assert decode_news(region="us-east-1", image_id="img", text=encode_news(held)) == held
    # A part the event did not speak about is not news; a whole look heard after it says everything.
    assert news(Change(region="us-east-1", image_id="img", source=Source.EVENT, observed_at=t0)) is None
    look = Change(region="us-east-1", image_id="img", source=Source.RECONCILE, observed_at=t0, whole=True)
    assert not supersedes(look, held)
    assert supersedes(replace(look, observed_at=held.observed_at), held)
    assert not supersedes(replace(look, observed_at=held.observed_at, unknown=frozenset({"imagebuilder"})), held)
