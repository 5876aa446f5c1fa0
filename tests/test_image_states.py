"""GET /v3/image-states: every image of the served regions in one answer, then the change stream from its changeSeq."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from tests.conftest import OTHER_REGION, REGION

pytestmark = pytest.mark.asyncio

PATH = "/v3/image-states"


async def states(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await client.get(PATH, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.slow
async def test_every_image_of_every_region_with_what_the_board_shows(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="board-build", imagebuilder_status="BUILDING")
    aws_state.create_image_stack(region=REGION, image_id="board-deleting")
    aws_state.set_stack_status(region=REGION, stack_name="board-deleting", status="DELETE_IN_PROGRESS")
    aws_state.create_ami(region=OTHER_REGION, image_id="board-done", version="3.10.1")
    await runtime.reconciler.run_once()
    describe = (await client.get("/v3/images/custom/board-build")).json()

    body = await states(client)

    assert body["regions"] == [REGION, OTHER_REGION]
    by_id = {item["imageId"]: item for item in body["images"]}
    # A stack being deleted is in none of ListImages' filters; here it is.
    assert set(by_id) == {"board-build", "board-deleting", "board-done"}
    build = by_id["board-build"]
    assert {key: build[key] for key in build if key not in {"statusSince", "changeSeq"}} == {
        "imageId": "board-build",
        "region": REGION,
        "imageBuildStatus": "BUILD_IN_PROGRESS",
        "cloudformationStackStatus": "CREATE_IN_PROGRESS",
        "imagebuilderImageStatus": "BUILDING",
        "version": "3.9.0",
        "creationTime": describe["cloudformationStackCreationTime"],
    }
    assert build["statusSince"].endswith("Z") and build["changeSeq"] <= body["changeSeq"]
    assert by_id["board-deleting"]["imageBuildStatus"] == "DELETE_IN_PROGRESS"
    done = by_id["board-done"]
    assert (done["region"], done["version"], done["imageBuildStatus"]) == (OTHER_REGION, "3.10.1", "BUILD_COMPLETE")
    assert "cloudformationStackStatus" not in done and None not in done.values()


@pytest.mark.slow
async def test_one_region_when_asked(runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient) -> None:
    aws_state.create_ami(region=REGION, image_id="here")
    aws_state.create_ami(region=OTHER_REGION, image_id="there")
    await runtime.reconciler.run_once()

    body = await states(client, region=OTHER_REGION)

    assert body["regions"] == [OTHER_REGION]
    assert [item["imageId"] for item in body["images"]] == ["there"]


@pytest.mark.parametrize("region", ["mars-north-1", "not a region"])
async def test_a_region_not_served_is_a_400(client: httpx.AsyncClient, region: str) -> None:
    response = await client.get(PATH, params={"region": region})
    assert response.status_code == 400 and set(response.json()) == {"message"}


@pytest.mark.slow
async def test_following_the_stream_from_changeseq_misses_nothing_and_repeats_nothing(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="watched", imagebuilder_status="BUILDING")
    await runtime.reconciler.run_once()
    listed = await states(client)
    aws_state.set_stack_status(region=REGION, stack_name="watched", status="CREATE_FAILED")
    await runtime.reconciler.run_once()

    from service.api.app import create_app
    from tests.conftest import serving

    async with serving(create_app(runtime.settings, runtime=runtime)) as base, httpx.AsyncClient(base_url=base) as http:
        headers = {"Last-Event-ID": str(listed["changeSeq"])}
        async with http.stream("GET", "/v3/image-changes", headers=headers) as stream:
            blocks: list[str] = []
            current: list[str] = []
            async for line in stream.aiter_lines():
                if line:
                    current.append(line)
                    continue
                if any(part.startswith("data: ") for part in current):
                    blocks.append("\n".join(current))
                    break
                current = []

    event = blocks[0]
    assert event.startswith("id: ") and "event: image" in event
    assert '"cloudformationStackStatus":"CREATE_FAILED"' in event
    assert int(event.split("\n")[0].removeprefix("id: ")) > listed["images"][0]["changeSeq"]


@pytest.mark.slow
async def test_the_answer_is_gzipped_and_revalidates(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    for index in range(12):
        aws_state.create_ami(region=REGION, image_id=f"many-{index}")
    await runtime.reconciler.run_once()

    first = await client.get(PATH, headers={"Accept-Encoding": "gzip"})
    again = await client.get(PATH, headers={"Accept-Encoding": "gzip", "If-None-Match": first.headers["etag"]})
    aws_state.create_ami(region=REGION, image_id="one-more")
    await runtime.reconciler.run_once()
    changed = await client.get(PATH, headers={"If-None-Match": first.headers["etag"]})

    assert first.headers["content-encoding"] == "gzip" and first.headers["etag"].startswith('W/"')
    assert again.status_code == 304
    assert changed.status_code == 200 and len(changed.json()["images"]) == 13
