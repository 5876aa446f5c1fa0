"""GET /v3/image-builds and its summary, over a scripted history whose truth is known, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.settings import Settings
from tests.fleet_script import ROLLBACK, T0, WEEK, Truth, at, fleet, ib_failure, iso
from tests.test_consumer import event_clock

__all__ = ["event_clock"]  # the autouse fixture: event times count from each test's start

pytestmark = pytest.mark.asyncio

WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(days=14)).isoformat()}


@pytest_asyncio.fixture
async def scripted(runtime: Runtime, aws_state: FakeAws) -> list[Truth]:
    script, truth = fleet()
    await script.apply(runtime)
    return truth


async def all_builds(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    query = {**WINDOW, **params}
    while True:
        response = await client.get("/v3/image-builds", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        found += body["builds"]
        if "nextToken" not in body:
            return found
        query = {**query, "nextToken": body["nextToken"]}


async def test_every_build_is_derived_as_it_really_happened(
    scripted: list[Truth], client: httpx.AsyncClient, aws_state: FakeAws
) -> None:
    builds = await all_builds(client)

    assert [(b["imageId"], b["startTime"]) for b in builds] == [(t.image_id, iso(at(t.start))) for t in scripted]
    for build, truth in zip(builds, scripted, strict=True):
        assert build["outcome"] == truth.outcome, build
        assert build["version"] == truth.version, build
        assert build["startExact"] is True, build
        assert build.get("cloudformationStackStatusReason") == truth.stack_reason, build
        assert build.get("imagebuilderImageStatusReason") == truth.imagebuilder_reason, build
        if truth.end is None:
            assert "endTime" not in build and "durationSeconds" not in build
        elif truth.end_exact:
            assert (build["endTime"], build["endExact"]) == (iso(at(truth.end)), True), build
            assert build["durationSeconds"] == (truth.end - truth.start) * 60
        else:
            # Seen only by the reconcile pass after it: within one interval, and the truth inside the bounds.
            assert build["endExact"] is False
            assert build["endNotBefore"] <= iso(at(truth.end)) <= build["endTime"], build
    assert aws_state.total_calls() == 0


async def test_phases_follow_aws_time_through_reordered_events_and_a_reconcile_gap(
    scripted: list[Truth], client: httpx.AsyncClient
) -> None:
    builds = {b["imageId"]: b for b in await all_builds(client) if b["startTime"] < iso(at(WEEK))}

    assert builds["alpha"]["phases"] == {
        "PENDING": 120.0, "BUILDING": 37 * 60.0, "TESTING": 15 * 60.0, "DISTRIBUTING": 300.0, "AVAILABLE": 120.0
    }
    # bravo: CREATE_COMPLETE (minute 80) arrived before TESTING (50) and AVAILABLE (78)
    assert builds["bravo"]["phases"] == {
        "PENDING": 120.0, "BUILDING": 37 * 60.0, "TESTING": 28 * 60.0, "AVAILABLE": 120.0
    }
    # delta: only reconciliation (minute 70) saw TESTING; BUILDING was never seen
    assert builds["delta"]["phases"] == {"PENDING": 39 * 60.0, "TESTING": 15 * 60.0, "AVAILABLE": 180.0}
    assert builds["echo"]["endNotBefore"] == iso(at(95))  # the pass before it (resync 300 s) had not seen it


async def test_filters_and_pages_keep_the_same_builds(scripted: list[Truth], client: httpx.AsyncClient) -> None:
    every = await all_builds(client)

    assert [b["imageId"] for b in await all_builds(client, outcome="failed")] == ["charlie", "alpha"]
    assert {b["imageId"] for b in await all_builds(client, version="3.10.0")} == {"charlie", "delta", "alpha", "golf"}
    assert [b["outcome"] for b in await all_builds(client, imageId="alpha")] == ["complete", "failed"]
    assert await all_builds(client, limit="3") == every
    assert await all_builds(client, order="desc", limit="2") == every[::-1]
    one_week = await all_builds(client, until=(T0 + timedelta(days=7)).isoformat())
    next_week = await all_builds(client, since=(T0 + timedelta(days=7)).isoformat())
    assert one_week + next_week == every  # half-open windows: each build counted once


async def test_summary_by_version_week_and_outcome(scripted: list[Truth], client: httpx.AsyncClient) -> None:
    async def summary(group_by: str) -> dict[str, Any]:
        response = await client.get("/v3/image-builds/summary", params={**WINDOW, "groupBy": group_by})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    by_version = await summary("version")
    assert by_version["groups"] == [
        {
            "key": "3.9.0", "builds": 4, "complete": 3, "failed": 0, "deleted": 1, "inProgress": 0,
            "successRate": 1.0,
            # complete builds' durations: alpha 62 min, bravo 70, echo 60 (as recorded: its end was seen at 100)
            "durationSeconds": {"p50": 62 * 60.0, "p90": 70 * 60.0, "max": 70 * 60.0},
        },
        {
            "key": "3.10.0", "builds": 4, "complete": 1, "failed": 2, "deleted": 0, "inProgress": 1,
            "successRate": 0.3333, "durationSeconds": {"p50": 58 * 60.0, "p90": 58 * 60.0, "max": 58 * 60.0},
        },
    ]
    # Both failures are the same Image Builder failure with different execution ids: counted together.
    assert by_version["failureReasons"] == [
        {
            "reason": "Image Build failed: Workflow Execution ID: 'wf-<id>' failed with reason: Step 'Build' failed. "
            "SSM execution '<id>' failed",
            "count": 2,
            "example": ib_failure("5c2d3f7a-91b4-4e0a-8d6f-2a7e9b1c4d08"),  # the window's first (charlie's)
        }
    ]
    assert [(g["key"], g["builds"]) for g in (await summary("week"))["groups"]] == [
        (T0.date().isoformat(), 6), ((T0 + timedelta(days=7)).date().isoformat(), 2)
    ]
    assert {g["key"]: g["builds"] for g in (await summary("outcome"))["groups"]} == {
        "complete": 4, "failed": 2, "deleted": 1, "in_progress": 1
    }
    assert by_version["since"] == iso(T0) and "pastHorizon" not in by_version
    assert ROLLBACK not in {reason["reason"] for reason in by_version["failureReasons"]}


async def test_a_window_reaching_past_the_horizon_says_so(scripted: list[Truth], client: httpx.AsyncClient) -> None:
    long_ago = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    for path in ("/v3/image-builds", "/v3/image-builds/summary"):
        response = await client.get(path, params={"since": long_ago})
        body = response.json()
        assert response.status_code == 200
        assert body["pastHorizon"] is True and response.headers["x-history-past-horizon"] == "true"
        assert body["horizon"] == response.headers["x-history-horizon"]
        assert body["horizon"] > long_ago[:10]
    inside = await client.get("/v3/image-builds", params=WINDOW)
    assert "pastHorizon" not in inside.json() and "x-history-past-horizon" not in inside.headers
    assert "x-history-horizon" in inside.headers


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/v3/image-builds", {"outcome": "succeeded"}, "outcome must be one of complete, failed, deleted, in_progress"),
        ("/v3/image-builds", {"version": "3.9.0; drop"}, "version must be a ParallelCluster version"),
        ("/v3/image-builds", {"imageId": "9bad"}, "does not match"),
        ("/v3/image-builds", {"limit": "1001"}, "limit must be a whole number from 1 to 1000"),
        ("/v3/image-builds", {"limit": "٣"}, "limit must be a whole number from 1 to 1000"),
        ("/v3/image-builds", {"order": "newest"}, "order must be one of asc, desc"),
        ("/v3/image-builds", {"since": "2026-02-30T00:00:00Z"}, "since must be an ISO 8601 timestamp"),
        ("/v3/image-builds", {"until": "0001-01-01T00:00:00+05:00"}, "until must be an ISO 8601 timestamp"),
        ("/v3/image-builds", {"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"},
         "since must be before until"),
        ("/v3/image-builds", {"groupBy": "version"}, "unknown query parameter 'groupBy'"),
        ("/v3/image-builds", {"nextToken": "garbage!"}, "nextToken is not one this service issued"),
        ("/v3/image-builds", {"region": "mars-north-1"}, "region"),
        ("/v3/image-builds/summary", {"groupBy": "team"}, "groupBy must be one of version, week, outcome"),
        ("/v3/image-builds/summary", {"limit": "5"}, "unknown query parameter 'limit'"),
    ],
)
async def test_bad_parameters_are_400(
    client: httpx.AsyncClient, aws_state: FakeAws, path: str, params: dict[str, str], message: str
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert aws_state.total_calls() == 0


async def test_a_token_continues_only_its_own_query(scripted: list[Truth], client: httpx.AsyncClient) -> None:
    first = (await client.get("/v3/image-builds", params={**WINDOW, "limit": "2"})).json()
    token = first["nextToken"]

    other = await client.get("/v3/image-builds", params={**WINDOW, "outcome": "failed", "nextToken": token})
    # The MAC's first character: all six of its bits count (a token's last character carries only two).
    mac = token.index(".") + 1
    forged = token[:mac] + ("B" if token[mac] == "A" else "A") + token[mac + 1 :]
    tampered = await client.get("/v3/image-builds", params={**WINDOW, "nextToken": forged})
    repeated = await client.get(f"/v3/image-builds?limit=2&limit=3&nextToken={token}")

    assert other.status_code == tampered.status_code == repeated.status_code == 400
    assert other.json() == tampered.json() == {"message": "Bad Request: nextToken is not one this service issued"}
    assert "more than once" in repeated.json()["message"]


@pytest.mark.slow
async def test_a_build_driven_by_real_events_through_the_queue_is_one_exact_build(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    from tests.test_consumer import Queue, stamp
    from tests.test_history import lifecycle

    await lifecycle(runtime, aws_state, Queue("builds-lifecycle"), "lifecycle")
    await runtime.cache.derive_builds()
    calls = aws_state.total_calls()

    (build,) = (await client.get("/v3/image-builds", params={"imageId": "lifecycle"})).json()["builds"]

    def event_time(seconds: int) -> str:
        return stamp(seconds).replace("Z", ".000Z")

    assert build == {
        "imageId": "lifecycle", "region": "us-east-1", "version": "3.9.0", "outcome": "complete",
        "startTime": event_time(1), "startExact": True, "endTime": event_time(5), "endExact": True,
        "durationSeconds": 4.0,
        "phases": {"PENDING": 1.0, "BUILDING": 1.0, "TESTING": 1.0, "AVAILABLE": 1.0},
        # issue 18: every entry says whether its evidence was kept (nothing captured here).
        "evidenceKept": False,
    }
    assert aws_state.total_calls() == calls


async def test_a_running_service_derives_builds_soon_after_their_transitions(settings: Settings) -> None:
    import asyncio
    import time

    from sqlalchemy import func, select

    from service.store.tables import builds, builds_pending

    script, truth = fleet()
    async with Runtime.open(settings, poll=False) as runtime:
        await runtime.cache.apply_many(script.changes)
        written = time.monotonic()
        while True:
            async with runtime.engine.connect() as connection:
                derived = (await connection.execute(select(func.count()).select_from(builds))).scalar_one()
                pending = (await connection.execute(select(func.count()).select_from(builds_pending))).scalar_one()
            if derived == len(truth) and pending == 0:
                break
            assert time.monotonic() - written < 3, (derived, pending)
            await asyncio.sleep(0.05)
        assert runtime.metrics.builds_derived >= len({t.image_id for t in truth})


async def test_summary_percentiles_are_the_nearest_ranks_of_each_groups_complete_durations(runtime: Runtime) -> None:
    import random

    from service.domain.builds import Build, Edge
    from service.store import builds as store
    from service.store.tables import builds

    rng = random.Random(7)
    rows = []
    expected: dict[str | None, list[float]] = {"3.9.0": [], "3.10.0": [], None: []}
    for number in range(120):
        version = ("3.9.0", "3.10.0", None)[number % 3]
        outcome = "complete" if number % 5 else "failed"
        start = T0 + timedelta(hours=number)
        seconds = float(rng.randrange(1800, 9000))
        if outcome == "complete":
            expected[version].append(seconds)
        build = Build(
            start=Edge(start, "event", True), end=Edge(start + timedelta(seconds=seconds), "event", True),
            outcome=outcome, version=version,
        )
        rows.append(store.build_row(region="us-east-1", image_id=f"img-{number}", number=0, build=build))
    async with runtime.engine.begin() as connection:
        await connection.execute(builds.insert(), rows)

    result = await store.summary(
        runtime.engine, where=store.BuildFilter(region="us-east-1"), group_by="version", query_seconds=10
    )

    def nearest(values: list[float], p: int) -> float:
        ordered = sorted(values)
        return ordered[max(1, -(-len(ordered) * p // 100)) - 1]

    assert [group.key for group in result.groups] == ["3.9.0", "3.10.0", None]
    for group in result.groups:
        durations = expected[group.key]
        assert group.by_outcome["complete"] == len(durations)
        assert group.percentiles == {50: nearest(durations, 50), 90: nearest(durations, 90)}
        assert group.longest == max(durations)
