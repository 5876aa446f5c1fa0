"""Freshness: the state that changes answers, kept apart from the counters, one per process."""

from __future__ import annotations

import pytest

from service.freshness import Freshness
from service.runtime import Runtime

REGION = "us-east-1"


@pytest.mark.parametrize(
    ("reconcile", "events", "behind"),
    [(None, None, None), (10.0, None, 10.0), (None, 20.0, 20.0), (30.0, 20.0, 20.0), (10.0, 20.0, 10.0)],
)
def test_behind_since_is_the_earlier_of_the_two_ways_of_hearing(
    reconcile: float | None, events: float | None, behind: float | None
) -> None:
    freshness = Freshness()
    if reconcile is not None:
        freshness.reconcile_behind_since[REGION] = reconcile
    if events is not None:
        freshness.events_behind_since[REGION] = events

    assert freshness.behind_since(REGION) == behind


@pytest.mark.parametrize(
    ("answer", "failure", "reachable"),
    [(None, None, True), (5.0, None, True), (None, 5.0, False), (5.0, 6.0, False), (6.0, 5.0, True), (5.0, 5.0, True)],
)
def test_aws_is_reachable_when_its_last_answer_is_not_older_than_its_last_failure(
    answer: float | None, failure: float | None, reachable: bool
) -> None:
    freshness = Freshness()
    if answer is not None:
        freshness.aws_last_answer[REGION] = answer
    if failure is not None:
        freshness.aws_last_failure[REGION] = failure

    assert freshness.aws_reachable(REGION) is reachable


@pytest.mark.asyncio
async def test_every_component_tells_the_runtimes_freshness(runtime: Runtime) -> None:
    assert runtime.aws.freshness is runtime.freshness
    for component in (runtime.reconciler, runtime.consumer, runtime.rechecker):
        assert component.freshness is runtime.freshness
