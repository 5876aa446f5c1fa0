"""gzip where it pays (list pages, history, the board's reads), never on describe, and ETags that survive it."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from service.api.compression import MIN_SIZE, accepts_gzip, weak
from service.api.requests import etag_matches
from service.demo.fakeaws import FakeAws
from service.domain.models import Change, Observed, Source, StackInfo
from service.runtime import Runtime
from tests.conftest import REGION

LIST = "/v3/images/custom"


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity", False),
        ("*", True),
        ("*;q=0", False),
        ("br, *;q=0.1", True),
        ("gzip;q=0, *", False),
        ("x-gzip", True),
        ("gzip;q=nonsense", False),
    ],
)
def test_accept_encoding_is_read_with_its_qualities(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize(
    ("if_none_match", "etag", "matches"),
    [
        ('"a1"', '"a1"', True),
        ('W/"a1"', '"a1"', True),
        ('"a1"', 'W/"a1"', True),
        ('W/"a1"', 'W/"a1"', True),
        ('"b2", W/"a1"', '"a1"', True),
        ("*", '"a1"', True),
        ('"a2"', '"a1"', False),
        ("", '"a1"', False),
        (None, '"a1"', False),
    ],
)
def test_if_none_match_compares_weakly(if_none_match: str | None, etag: str, matches: bool) -> None:
    assert etag_matches(if_none_match, etag) is matches


def test_weakening_a_tag_is_idempotent() -> None:
    assert weak('"x"') == 'W/"x"' == weak('W/"x"')



async def a_full_page(runtime: Runtime, aws: FakeAws, count: int = 12) -> None:
    for index in range(count):
        aws.create_ami(region=REGION, image_id=f"zip-page-{index:02d}")
    await runtime.reconciler.run_once()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_list_page_is_gzipped_when_accepted_with_its_etag_weakened(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    await a_full_page(runtime, aws_state)
    plain = await client.get(LIST, params={"imageStatus": "AVAILABLE"}, headers={"Accept-Encoding": "identity"})
    async with client.stream(
        "GET", LIST, params={"imageStatus": "AVAILABLE"}, headers={"Accept-Encoding": "gzip"}
    ) as zipped:
        raw = b"".join([chunk async for chunk in zipped.aiter_raw()])

    assert len(plain.content) >= MIN_SIZE
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == plain.content
    assert len(raw) * 3 < len(plain.content)
    assert zipped.headers["etag"] == "W/" + plain.headers["etag"]
    assert plain.headers["vary"] == zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) == len(raw)


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["gzip", "identity"])
@pytest.mark.parametrize("tag_form", ["strong", "weak"])
@pytest.mark.slow
async def test_a_list_page_revalidates_with_either_form_of_its_etag(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient, encoding: str, tag_form: str
) -> None:
    await a_full_page(runtime, aws_state)
    first = await client.get(LIST, params={"imageStatus": "AVAILABLE"}, headers={"Accept-Encoding": "identity"})
    tag = first.headers["etag"] if tag_form == "strong" else weak(first.headers["etag"])

    again = await client.get(
        LIST, params={"imageStatus": "AVAILABLE"}, headers={"Accept-Encoding": encoding, "If-None-Match": tag}
    )

    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == (weak(tag) if encoding == "gzip" else first.headers["etag"])


@pytest.mark.asyncio
async def test_a_describe_answer_is_never_compressed(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="not-zipped")
    answers = [
        await client.get("/v3/images/custom/not-zipped", headers={"Accept-Encoding": "gzip"}) for _ in range(3)
    ]
    assert [answer.headers["x-cache"] for answer in answers] == ["MISS", "HIT", "HIT"]
    assert all("content-encoding" not in answer.headers for answer in answers)
    assert all(not answer.headers["etag"].startswith("W/") for answer in answers)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_small_answers_stay_plain(runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient) -> None:
    aws_state.create_ami(region=REGION, image_id="alone")
    await runtime.reconciler.run_once()
    page = await client.get(LIST, params={"imageStatus": "AVAILABLE"}, headers={"Accept-Encoding": "gzip"})
    assert len(page.content) < MIN_SIZE
    assert "content-encoding" not in page.headers and not page.headers["etag"].startswith("W/")


@pytest.mark.asyncio
async def test_a_long_history_is_gzipped_when_accepted(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id="long-history")
    start = datetime.now(UTC)
    statuses = ["CREATE_IN_PROGRESS", "UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"] * 4
    for index, status in enumerate(statuses):
        at = start + timedelta(seconds=index)
        stack = StackInfo("long-history", stack_id, status, start, (("parallelcluster:image_id", "long-history"),))
        await runtime.cache.apply(
            Change(region=REGION, image_id="long-history", source=Source.RECONCILE, observed_at=at,
                   stack=Observed(at, stack))
        )

    plain = await client.get("/v3/images/custom/long-history/history", headers={"Accept-Encoding": "identity"})
    zipped = await client.get("/v3/images/custom/long-history/history", headers={"Accept-Encoding": "gzip"})

    assert len(plain.json()["transitions"]) == len(statuses)
    assert len(plain.content) >= MIN_SIZE and "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == plain.content
