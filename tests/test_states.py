"""Every image's state in one query (what /metrics and the board read), with its fingerprint, on both backends."""

from __future__ import annotations

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.store import states
from tests.conftest import OTHER_REGION, REGION

pytestmark = pytest.mark.asyncio


@pytest.mark.slow
async def test_one_row_per_image_with_the_documents_version_and_creation_time(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="state-stack", imagebuilder_status="BUILDING")
    aws_state.create_ami(region=REGION, image_id="state-ami", version="3.11.1")
    aws_state.create_ami(region=OTHER_REGION, image_id="state-elsewhere")
    await runtime.reconciler.run_once()
    stack_doc = (await client.get("/v3/images/custom/state-stack")).json()
    ami_doc = (await client.get("/v3/images/custom/state-ami")).json()

    read = await states.read(runtime.engine, regions=(REGION,))

    by_id = {image.image_id: image for image in read.images}
    assert set(by_id) == {"state-ami", "state-stack"}
    stack, ami = by_id["state-stack"], by_id["state-ami"]
    assert (stack.build_status, stack.stack_status, stack.imagebuilder_status) == (
        "BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "BUILDING"
    )
    assert (stack.pcluster_version, stack.created) == ("3.9.0", stack_doc["cloudformationStackCreationTime"])
    assert (ami.build_status, ami.stack_status, ami.pcluster_version) == ("BUILD_COMPLETE", None, "3.11.1")
    assert ami.created is not None and ami.created.startswith(ami_doc["creationTime"][:19])
    assert stack.status_since is not None and stack.status_since.tzinfo is not None
    assert all(image.exists and image.seq > 0 for image in read.images)


@pytest.mark.slow
async def test_the_fingerprint_moves_with_every_change_and_only_then(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="print-1", imagebuilder_status="BUILDING")
    await runtime.reconciler.run_once()
    first = await states.fingerprint(runtime.engine, regions=(REGION,))
    assert first == (await states.read(runtime.engine, regions=(REGION,))).fingerprint

    await runtime.reconciler.run_once()  # nothing changed in AWS
    assert await states.fingerprint(runtime.engine, regions=(REGION,)) == first

    aws_state.put_imagebuilder_image(aws_state.imagebuilder_arn(region=REGION, image_id="print-1"), status="TESTING")
    aws_state.set_stack_status(region=REGION, stack_name="print-1", status="UPDATE_IN_PROGRESS")
    await runtime.reconciler.run_once()
    moved = await states.fingerprint(runtime.engine, regions=(REGION,))
    assert moved != first and moved == (await states.read(runtime.engine, regions=(REGION,))).fingerprint
    assert await states.fingerprint(runtime.engine, regions=(OTHER_REGION,)) == (0, 0)


@pytest.mark.slow
async def test_a_gone_image_is_a_row_that_no_longer_exists(runtime: Runtime, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="state-gone")
    await runtime.reconciler.run_once()
    aws_state.delete_stack(region=REGION, stack_name="state-gone")
    await runtime.reconciler.run_once()

    read = await states.read(runtime.engine, regions=(REGION,))

    assert [(image.image_id, image.exists) for image in read.images] == [("state-gone", False)]
    assert read.existing == []
