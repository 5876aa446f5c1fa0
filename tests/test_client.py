"""The Python client against a live service on the fake AWS: the seed's shape for every describe branch,
live and cached, the same values as the HTTP API, pcluster-named errors, pages, history, and watch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import service.client
from service.client import (
    AsyncClient,
    BadRequestException,
    Client,
    ImageChange,
    InternalServiceException,
    LimitExceededException,
    NotFoundException,
    ServiceUnreachableException,
)
from service.client.shapes import pythonic
from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, LiveService, free_port


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    """The pre-signed URL without its signature (and expiry), which differ on every signing."""
    url = document.get("image_configuration", {}).get("url", "")
    if url and url != "NOT_AVAILABLE":
        parts = urlsplit(url)
        document = {**document, "image_configuration": {"url": f"{parts.scheme}://{parts.netloc}{parts.path}"}}
    return document


def build_branches(aws: FakeAws) -> list[str]:
    """Every branch of describe: AMI path, stack path with and without Image Builder, failed and deleting."""
    aws.create_ami(region=REGION, image_id="cl-ami")
    aws.create_ami(region=REGION, image_id="cl-ami-nodesc", description=None, architecture="arm64")
    aws.create_image_stack(region=REGION, image_id="cl-building", imagebuilder_status="BUILDING")
    aws.create_image_stack(region=REGION, image_id="cl-no-ib", imagebuilder_status=None)
    aws.create_image_stack(region=REGION, image_id="cl-early", with_image_resource=False)
    aws.create_image_stack(
        region=REGION, image_id="cl-failed", status="ROLLBACK_COMPLETE", reason="Rollback requested by user.",
        imagebuilder_status="FAILED", imagebuilder_reason="Image Build failed",
    )  # fmt: skip
    aws.create_image_stack(region=REGION, image_id="cl-deleting", status="DELETE_IN_PROGRESS", reason="User Initiated")
    return ["cl-ami", "cl-ami-nodesc", "cl-building", "cl-no-ib", "cl-early", "cl-failed", "cl-deleting"]


@pytest.mark.slow
def test_describe_image_gives_the_seeds_shape_with_the_apis_values_live_and_cached(
    live_service: LiveService, aws_state: FakeAws
) -> None:
    ids = build_branches(aws_state)
    with Client(live_service.base_url) as client:
        live = {image_id: client.describe_image(image_id, REGION) for image_id in ids}
        cached = {image_id: client.describe_image(image_id) for image_id in ids}
        http = {image_id: httpx.get(f"{live_service.base_url}/v3/images/custom/{image_id}").json() for image_id in ids}
    for image_id in ids:
        assert comparable(live[image_id]) == comparable(cached[image_id]) == comparable(pythonic(http[image_id]))
    building = live["cl-building"]
    assert building["image_id"] == "cl-building" and building["imagebuilder_image_status"] == "BUILDING"
    assert isinstance(building["cloudformation_stack_creation_time"], datetime)
    assert building["cloudformation_stack_creation_time"].tzinfo is not None
    assert {"key": "parallelcluster:image_id", "value": "cl-building"} in building["cloudformation_stack_tags"]
    assert "imagebuilder_image_status" not in live["cl-no-ib"] and "imagebuilder_image_status" not in live["cl-early"]
    assert live["cl-failed"]["image_build_status"] == "BUILD_FAILED"
    assert live["cl-failed"]["imagebuilder_image_status_reason"] == "Image Build failed"
    assert live["cl-deleting"]["image_build_status"] == "DELETE_IN_PROGRESS"
    ami = live["cl-ami"]
    assert ami["creation_time"].tzinfo is not None and ami["ec2_ami_info"]["ami_id"].startswith("ami-")
    assert set(ami["ec2_ami_info"]) >= {"ami_id", "ami_name", "architecture", "state", "tags", "description"}
    assert "description" not in live["cl-ami-nodesc"]["ec2_ami_info"]
    assert not [key for key in ami if key.startswith("cloudformation")]


@pytest.mark.slow
def test_errors_are_pclusters_exceptions_with_the_services_message(
    live_service: LiveService, aws_state: FakeAws
) -> None:
    with Client(live_service.base_url) as client:
        with pytest.raises(NotFoundException) as missing:
            client.describe_image("cl-never-built")
        with pytest.raises(BadRequestException) as bad:
            client.describe_image("1-bad")
        with pytest.raises(BadRequestException) as region:
            client.describe_image("cl-anything", region="mars-1")
        with pytest.raises(BadRequestException) as slashed:
            # Refused before it is sent: servers decode %2F, so "x/history" would reach another route.
            client.describe_image("x/history")
        aws_state.fail_all(status=503)
        try:
            with pytest.raises(InternalServiceException) as down:
                client.describe_image("cl-unreachable")
        finally:
            aws_state.recover()
    assert (missing.value.status, missing.value.message) == (
        404, "No image or stack associated with ParallelCluster image id: cl-never-built.",
    )  # fmt: skip
    assert bad.value.status == 400
    assert bad.value.message == "Bad Request: '1-bad' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"
    assert region.value.message == "Bad Request: invalid or unsupported region 'mars-1'"
    assert slashed.value.message == "Bad Request: 'x/history' does not match '^[a-zA-Z][a-zA-Z0-9-]+$'"
    assert down.value.status == 503 and down.value.message
    assert isinstance(missing.value, service.client.ApiException)


@pytest.mark.slow
def test_a_throttled_call_is_limit_exceeded_with_its_retry_after(live_service: LiveService, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cl-throttled")
    aws_state.fail_next("ec2.DescribeImages", code="RequestLimitExceeded", times=4)
    with Client(live_service.base_url) as client, pytest.raises(LimitExceededException) as throttled:
        client.describe_image("cl-throttled")
    assert throttled.value.status == 429 and throttled.value.retry_after == 5
    assert "throttling" in throttled.value.message


def test_no_service_is_a_clear_error_of_the_same_family() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client, pytest.raises(
        ServiceUnreachableException
    ) as unreachable:
        client.describe_image("anything")
    assert unreachable.value.status is None
    assert unreachable.value.message.startswith("statuscache at http://127.0.0.1:")


@pytest.mark.slow
def test_list_images_pages_and_iterates_every_image(live_service: LiveService, aws_state: FakeAws) -> None:
    for index in range(103):
        aws_state.create_ami(region=REGION, image_id=f"cl-list-{index:03d}")
    live_service.run(live_service.app.state.runtime.reconciler.run_pass(region=REGION))
    with Client(live_service.base_url) as client:
        first = client.list_images("AVAILABLE", REGION)
        second = client.list_images("AVAILABLE", REGION, next_token=first["next_token"])
        every = list(client.iter_images("AVAILABLE"))
    assert len(first["images"]) == 100 and "next_token" not in second
    assert first["images"][0] == {
        "image_id": "cl-list-000", "image_build_status": "BUILD_COMPLETE",
        "ec2_ami_info": {"ami_id": first["images"][0]["ec2_ami_info"]["ami_id"]}, "region": REGION, "version": "3.9.0",
    }  # fmt: skip
    assert [image["image_id"] for image in every] == [f"cl-list-{index:03d}" for index in range(103)]


@pytest.mark.slow
def test_history_and_time_travel(live_service: LiveService, aws_state: FakeAws) -> None:
    runtime = live_service.app.state.runtime
    aws_state.create_image_stack(region=REGION, image_id="cl-history")
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    between = datetime.now(UTC)
    aws_state.set_stack_status(region=REGION, stack_name="cl-history", status="CREATE_COMPLETE")
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    with Client(live_service.base_url) as client:
        history = client.image_history("cl-history")
        later = client.image_history("cl-history", since=between)
        past = client.describe_image("cl-history", at=between)
        now = client.describe_image("cl-history")
    assert [item["cloudformation_stack_status"] for item in history["transitions"]] == [
        "CREATE_IN_PROGRESS", "CREATE_COMPLETE",
    ]  # fmt: skip
    assert history["image_id"] == "cl-history" and history["region"] == REGION
    assert all(isinstance(item["time"], datetime) and item["time"].tzinfo for item in history["transitions"])
    assert [item["cloudformation_stack_status"] for item in later["transitions"]] == ["CREATE_COMPLETE"]
    assert (past["cloudformation_stack_status"], now["cloudformation_stack_status"]) == (
        "CREATE_IN_PROGRESS", "CREATE_COMPLETE",
    )  # fmt: skip


@pytest.mark.slow
def test_module_functions_use_statuscache_url(
    live_service: LiveService, aws_state: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cl-module")
    monkeypatch.setenv("STATUSCACHE_URL", live_service.base_url)
    assert service.client.describe_image("cl-module")["image_id"] == "cl-module"
    assert service.client.list_images("PENDING")["images"][0]["image_id"] == "cl-module"
    monkeypatch.setenv("STATUSCACHE_URL", f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ServiceUnreachableException):
            service.client.describe_image("cl-module")
    finally:
        # The shared clients hold pooled connections: close them, as a process would at exit.
        for shared in service.client._shared.values():
            shared.close()
        service.client._shared.clear()


@pytest.mark.asyncio
@pytest.mark.slow
async def test_the_async_twin_answers_the_same(live_service: LiveService, aws_state: FakeAws) -> None:
    ids = build_branches(aws_state)
    async with AsyncClient(live_service.base_url) as client:
        answers = {image_id: await client.describe_image(image_id) for image_id in ids}
        with pytest.raises(NotFoundException):
            await client.describe_image("cl-never-built")
        pending = [image async for image in client.iter_images("PENDING")]
    with Client(live_service.base_url) as sync:
        for image_id in ids:
            assert comparable(answers[image_id]) == comparable(sync.describe_image(image_id))
    assert {image["image_id"] for image in pending} == {"cl-building", "cl-no-ib", "cl-early"}


@pytest.mark.slow
def test_watch_sees_a_change_made_in_the_service(live_service: LiveService, aws_state: FakeAws) -> None:
    runtime = live_service.app.state.runtime
    aws_state.create_image_stack(region=REGION, image_id="cl-watched")
    seen: list[ImageChange] = []

    def follow() -> None:
        with Client(live_service.base_url) as client:
            for change in client.watch(image_id="cl-watched", last_event_id=0):
                seen.append(change)
                if len(seen) == 2:
                    return

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    aws_state.set_stack_status(region=REGION, stack_name="cl-watched", status="CREATE_COMPLETE")
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    watcher.join(20)
    assert [change.document and change.document["cloudformation_stack_status"] for change in seen] == [
        "CREATE_IN_PROGRESS", "CREATE_COMPLETE",
    ]  # fmt: skip
    assert seen[0].id < seen[1].id and seen[0].image_id == "cl-watched" and seen[0].region == REGION


# --- reconnecting: a scripted stream that drops, repeats and restarts ---------------------------------


class ScriptedStream:
    """A change stream that ends every connection early and answers what Last-Event-ID each one sent."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def block(self, seq: int) -> bytes:
        return b'id: %d\nevent: image\ndata: {"imageId":"s","region":"us-east-1","imageBuildStatus":"B%d"}\n\n' % (
            seq, seq
        )

    async def endpoint(self, request: Request) -> Response:
        last = request.headers.get("last-event-id")
        self.asked.append(last)
        connection = len(self.asked)
        if connection == 2:
            # A replica that is not ready: the client backs off and tries again.
            return Response(b'{"message":"not now"}', status_code=503, media_type="application/json")

        async def body() -> AsyncIterator[bytes]:
            yield b"retry: 10\nid: %d\n: connected\n\n" % (int(last) if last else 0)
            if connection == 1:
                yield self.block(1)
                yield self.block(2)
                return  # dropped
            # Resumed: the last one seen comes again (at least once), then the rest, then the end.
            start = int(last or 0)
            for seq in range(start, 6):
                if seq:
                    yield self.block(seq)

        return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
def scripted() -> Iterator[tuple[str, ScriptedStream]]:
    stream = ScriptedStream()
    app = Starlette(routes=[Route("/v3/image-changes", stream.endpoint)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    try:
        yield f"http://127.0.0.1:{port}", stream
    finally:
        server.should_exit = True
        thread.join(10)


def test_watch_reconnects_with_last_event_id_and_never_repeats_or_skips(
    scripted: tuple[str, ScriptedStream],
) -> None:
    base, stream = scripted
    with Client(base) as client:
        changes = client.watch()
        ids = [next(changes).id for _ in range(5)]
    assert ids == [1, 2, 3, 4, 5]
    assert stream.asked[:3] == [None, "2", "2"]


@pytest.mark.asyncio
async def test_the_async_watch_reconnects_the_same_way(scripted: tuple[str, ScriptedStream]) -> None:
    base, stream = scripted
    async with AsyncClient(base) as client:
        changes = client.watch()
        ids = [(await anext(changes)).id for _ in range(5)]
        await changes.aclose()  # type: ignore[attr-defined]
    assert ids == [1, 2, 3, 4, 5]
    assert stream.asked[:3] == [None, "2", "2"]


@pytest.mark.asyncio
async def test_a_refused_stream_raises_instead_of_retrying(live_service: LiveService) -> None:
    async with AsyncClient(live_service.base_url) as client:
        with pytest.raises(BadRequestException):
            await asyncio.wait_for(anext(client.watch(region="mars-1")), timeout=10)
