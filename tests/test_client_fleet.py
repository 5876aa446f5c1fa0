"""The fleet's past through the client and the CLI: builds, their summary, transitions and their exports, and
list-images at a moment, over the scripted fleet whose truth is known (tests.fleet_script)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.__main__ import main
from service.client import AsyncClient, BadRequestException, Client, api
from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, LiveService
from tests.fleet_script import ROLLBACK, T0, Truth, at, fleet, iso

SINCE, UNTIL = T0, T0 + timedelta(days=14)


@pytest.fixture
def history(live_service: LiveService, aws_state: FakeAws) -> Iterator[tuple[LiveService, list[Truth]]]:
    script, truth = fleet()
    runtime = live_service.app.state.runtime
    live_service.run(script.apply(runtime))
    live_service.run(runtime.cache.derive_builds())
    yield live_service, truth


def raw_pages(base: str, path: str, items: str, **params: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        body = httpx.get(f"{base}{path}", params=query).json()
        found += body[items]
        if "nextToken" not in body:
            return found
        query["nextToken"] = body["nextToken"]


def test_builds_are_the_true_builds_in_the_seeds_python_shape(history: tuple[LiveService, list[Truth]]) -> None:
    service, truth = history
    with Client(service.base_url) as client:
        builds = list(client.image_builds(since=SINCE, until=UNTIL))
        failed = list(client.image_builds(since=SINCE, until=UNTIL, outcome="failed", order="desc"))

    assert [(b["image_id"], b["start_time"]) for b in builds] == [(t.image_id, at(t.start)) for t in truth]
    for build, expected in zip(builds, truth, strict=True):
        assert (build["outcome"], build["version"]) == (expected.outcome, expected.version)
        assert build["start_time"].tzinfo is not None
        assert build.get("cloudformation_stack_status_reason") == expected.stack_reason
        assert build.get("imagebuilder_image_status_reason") == expected.imagebuilder_reason
        if expected.end is not None and expected.end_exact:
            assert build["end_time"] == at(expected.end)
            assert build["duration_seconds"] == (expected.end - expected.start) * 60
    # A build's phases are keyed by Image Builder's statuses, as the API spells them (data, not field names).
    alpha = builds[0]
    assert set(alpha["phases"]) >= {"BUILDING", "TESTING", "DISTRIBUTING"}
    assert [(b["image_id"], b["start_time"]) for b in failed] == [
        (t.image_id, at(t.start)) for t in reversed(truth) if t.outcome == "failed"
    ]


def test_pages_are_followed_to_the_end(
    history: tuple[LiveService, list[Truth]], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, truth = history
    monkeypatch.setattr(api, "FLEET_PAGE", "2")
    window = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    with Client(service.base_url) as client:
        builds = list(client.image_builds(since=SINCE, until=UNTIL))
        transitions = list(client.image_transitions(since=SINCE, until=UNTIL))
    everything = raw_pages(service.base_url, "/v3/image-transitions", "transitions", **window, limit="1000")
    assert len(builds) == len(truth)
    assert len(transitions) == len(everything) > 20
    assert [(t["image_id"], t["time"]) for t in transitions] == [
        (item["imageId"], datetime.fromisoformat(item["time"])) for item in everything
    ]


def test_the_summary_counts_what_happened(history: tuple[LiveService, list[Truth]]) -> None:
    service, truth = history
    with Client(service.base_url) as client:
        summary = client.builds_summary(since=SINCE, until=UNTIL, group_by="version")
        by_outcome = client.builds_summary(since=SINCE, until=UNTIL, group_by="outcome")

    groups = {group["key"]: group for group in summary["groups"]}
    for version in ("3.9.0", "3.10.0"):
        mine = [t for t in truth if t.version == version]
        assert groups[version]["builds"] == len(mine)
        assert groups[version]["failed"] == sum(t.outcome == "failed" for t in mine)
    assert summary["since"] == SINCE and summary["until"] == UNTIL
    assert summary["failure_reasons"][0]["reason"] and summary["failure_reasons"][0]["count"] >= 1
    assert sum(group["builds"] for group in by_outcome["groups"]) == len(truth)


def test_exports_stream_what_the_service_exports(history: tuple[LiveService, list[Truth]]) -> None:
    service, _ = history
    window = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    with Client(service.base_url) as client:
        ndjson = b"".join(client.export_transitions("ndjson", since=SINCE, until=UNTIL))
        csv = b"".join(client.export_transitions("csv", since=SINCE, until=UNTIL, image_id="alpha"))
        with pytest.raises(ValueError, match="media must be one of"):
            list(client.export_transitions("xml"))
        with pytest.raises(BadRequestException, match="order must be one of"):
            list(client.export_transitions("ndjson", order="sideways"))
    direct = httpx.get(
        f"{service.base_url}/v3/image-transitions", params=window, headers={"Accept": "application/x-ndjson"}
    ).content
    assert ndjson == direct
    listed = raw_pages(service.base_url, "/v3/image-transitions", "transitions", **window)
    assert len(ndjson.splitlines()) == len(listed)
    lines = csv.decode().splitlines()
    assert lines[0].startswith("imageId,") and all(line.startswith("alpha,") for line in lines[1:]) and len(lines) > 5


def test_list_images_at_a_moment(history: tuple[LiveService, list[Truth]]) -> None:
    service, _ = history
    moment = at(46)  # charlie has begun to roll back; alpha, bravo, delta, echo are building
    with Client(service.base_url) as client:
        pending = [image["image_id"] for image in client.iter_images("PENDING", at=moment)]
        failed = client.list_images("FAILED", at=moment)["images"]
        now = [image["image_id"] for image in client.iter_images("PENDING")]
    assert pending == ["alpha", "bravo", "delta", "echo"]
    assert [image["image_id"] for image in failed] == ["charlie"]
    assert now == ["golf"]


@pytest.mark.asyncio
async def test_the_async_twin_answers_the_same(history: tuple[LiveService, list[Truth]]) -> None:
    service, _ = history
    async with AsyncClient(service.base_url) as client:
        builds = [build async for build in client.image_builds(since=SINCE, until=UNTIL)]
        transitions = [item async for item in client.image_transitions(since=SINCE, until=UNTIL, image_id="alpha")]
        summary = await client.builds_summary(since=SINCE, until=UNTIL)
        export = b"".join([chunk async for chunk in client.export_transitions("ndjson", since=SINCE, until=UNTIL)])
        pending = [image["image_id"] async for image in client.iter_images("PENDING", at=at(46))]
    with Client(service.base_url) as sync:
        assert builds == list(sync.image_builds(since=SINCE, until=UNTIL))
        assert transitions == list(sync.image_transitions(since=SINCE, until=UNTIL, image_id="alpha"))
        # The horizon is "now minus the retention": it moves between the two calls.
        assert summary | {"horizon": None} == sync.builds_summary(since=SINCE, until=UNTIL) | {"horizon": None}
        assert export == b"".join(sync.export_transitions("ndjson", since=SINCE, until=UNTIL))
    assert pending == ["alpha", "bravo", "delta", "echo"]


# --- the CLI ---------------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().out


def test_builds_prints_a_table_of_the_builds(
    history: tuple[LiveService, list[Truth]], capsys: pytest.CaptureFixture[str]
) -> None:
    service, truth = history
    status, out = run(capsys, "builds", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
                      "--endpoint", service.base_url)  # fmt: skip
    lines = out.splitlines()
    assert status == 0
    assert lines[0].split() == ["START", "IMAGE", "VERSION", "OUTCOME", "DURATION", "REASON"]
    assert lines[-1] == f"{len(truth)} builds"
    rows = lines[1:-1]
    assert [row.split()[1] for row in rows] == [t.image_id for t in truth]
    charlie = next(row for row in rows if row.split()[1] == "charlie")
    assert charlie.split()[:5] == [iso(at(20)), "charlie", "3.10.0", "failed", "25m00s"] and ROLLBACK in charlie
    # echo's end was seen by reconciliation only: its start is exact, its duration is to within a pass.
    assert next(row for row in rows if row.split()[1] == "golf").split()[3:5] == ["in_progress", "-"]


def test_builds_since_a_span_before_now_and_as_json(
    history: tuple[LiveService, list[Truth]], capsys: pytest.CaptureFixture[str]
) -> None:
    service, truth = history
    status, out = run(capsys, "builds", "--since", "30d", "--outcome", "failed", "--output", "json",
                      "--endpoint", service.base_url)  # fmt: skip
    assert status == 0
    printed = json.loads(out)
    assert [(b["imageId"], b["startTime"]) for b in printed] == [
        (t.image_id, iso(at(t.start))) for t in truth if t.outcome == "failed"
    ]
    status, out = run(capsys, "builds", "--since", "2d", "--endpoint", service.base_url)
    assert (status, out.splitlines()[-1]) == (0, "0 builds")


def test_builds_summary_is_a_weekly_report(
    history: tuple[LiveService, list[Truth]], capsys: pytest.CaptureFixture[str]
) -> None:
    service, truth = history
    status, out = run(capsys, "builds", "--summary", "--group-by", "version", "--since", SINCE.isoformat(),
                      "--until", UNTIL.isoformat(), "--endpoint", service.base_url)  # fmt: skip
    lines = out.splitlines()
    assert status == 0
    assert lines[0].startswith(f"Builds in {REGION} since ") and lines[0].endswith("by version")
    assert lines[1].split() == ["GROUP", "BUILDS", "COMPLETE", "FAILED", "DELETED", "IN", "PROGRESS", "SUCCESS",
                                "P50", "P90", "MAX"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    nine = [t for t in truth if t.version == "3.9.0"]
    assert rows["3.9.0"][1:6] == [str(len(nine)), "3", "0", "1", "0"] and rows["3.9.0"][6] == "100%"
    assert "Most frequent failure reasons:" in lines
    reasons = lines[lines.index("Most frequent failure reasons:") + 1 :]
    assert reasons[0].split() == ["COUNT", "REASON"] and len(reasons) > 1
    status, out = run(capsys, "builds", "--summary", "--output", "json", "--since", SINCE.isoformat(),
                      "--until", UNTIL.isoformat(), "--endpoint", service.base_url)  # fmt: skip
    assert status == 0 and json.loads(out)["groupBy"] == "version"


def test_transitions_table_json_and_exports(
    history: tuple[LiveService, list[Truth]], capsys: pytest.CaptureFixture[str]
) -> None:
    service, _ = history
    window = ("--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--endpoint", service.base_url)
    everything = raw_pages(service.base_url, "/v3/image-transitions", "transitions",
                           since=SINCE.isoformat(), until=UNTIL.isoformat())  # fmt: skip

    status, table = run(capsys, "transitions", "-i", "charlie", *window)
    assert status == 0
    rows = table.splitlines()
    charlie = [item for item in everything if item["imageId"] == "charlie"]
    assert rows[0].split()[:3] == ["TIME", "IMAGE", "BUILD"] and rows[-1] == f"{len(charlie)} transitions"
    assert [row.split()[0] for row in rows[1:-1]] == [item["time"] for item in charlie]

    status, printed = run(capsys, "transitions", "--output", "json", *window)
    assert (status, json.loads(printed)) == (0, everything)

    for media, accept in (("ndjson", "application/x-ndjson"), ("csv", "text/csv")):
        status, exported = run(capsys, "transitions", "--output", media, *window)
        direct = httpx.get(f"{service.base_url}/v3/image-transitions", headers={"Accept": accept},
                           params={"since": SINCE.isoformat(), "until": UNTIL.isoformat()})  # fmt: skip
        assert status == 0 and exported == direct.text


def test_list_images_at(history: tuple[LiveService, list[Truth]], capsys: pytest.CaptureFixture[str]) -> None:
    service, _ = history
    status, out = run(capsys, "list-images", "--image-status", "FAILED", "--at", at(46).isoformat(),
                      "--region", REGION, "--endpoint", service.base_url)  # fmt: skip
    assert status == 0 and [image["imageId"] for image in json.loads(out)["images"]] == ["charlie"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("builds", "--since", "yesterday"), "Bad Request: --since must be an ISO 8601 timestamp or a span"),
        (("transitions", "--until", "soon"), "Bad Request: --until must be an ISO 8601 timestamp or a span"),
        (("builds", "--since", "2026-02-30T00:00:00Z"), "since must be an ISO 8601 timestamp"),
        (("builds", "--image-id", "9bad"), "does not match"),
        (("transitions", "--image-build-status", "DONE"), "imageBuildStatus must be one of"),
    ],
)
def test_bad_input_is_pclusters_message_and_exit_1(
    live_service: LiveService, aws_state: FakeAws, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
    message: str,
) -> None:
    calls = aws_state.total_calls()
    status, out = run(capsys, *argv, "--endpoint", live_service.base_url)
    assert status == 1
    assert message in json.loads(out)["message"]
    assert aws_state.total_calls() == calls


def test_spans_and_durations_read_as_people_write_them() -> None:
    from service.client import cli

    before = datetime.now(UTC)
    week_ago = datetime.fromisoformat(cli._moment("7d", "--since") or "")
    assert before - timedelta(days=7, seconds=5) < week_ago <= datetime.now(UTC) - timedelta(days=7)
    assert datetime.fromisoformat(cli._moment("90m", "--since") or "") < datetime.now(UTC) - timedelta(minutes=89)
    assert cli._moment("2026-01-01T00:00:00Z", "--since") == "2026-01-01T00:00:00Z"  # the service checks ISO text
    assert [cli._duration(s) for s in (None, 4.0, 61.4, 1500.0, 3725.0)] == ["-", "4s", "1m01s", "25m00s", "1h02m05s"]


def test_fleet_pages_are_gzipped_for_clients_that_accept_it(history: tuple[LiveService, list[Truth]]) -> None:
    service, _ = history
    window = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
    for path in ("/v3/image-transitions", "/v3/image-builds"):
        zipped = httpx.get(f"{service.base_url}{path}", params=window, headers={"Accept-Encoding": "gzip"})
        plain = httpx.get(f"{service.base_url}{path}", params=window, headers={"Accept-Encoding": "identity"})
        assert (zipped.headers["content-encoding"], zipped.headers["vary"]) == ("gzip", "Accept-Encoding"), path
        assert "content-encoding" not in plain.headers
        assert zipped.json() | {"horizon": None} == plain.json() | {"horizon": None}  # now minus the retention
        assert int(zipped.headers["content-length"]) < len(plain.content) / 3
