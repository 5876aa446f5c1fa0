"""What an observation may claim: AWS saying "not there" is a fact; AWS not answering is not knowing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from service.domain.models import (
    PART_CONFIG,
    PART_IMAGEBUILDER,
    PART_STACK,
    AmiInfo,
    ConfigLocation,
    ImagebuilderState,
    StackInfo,
)
from service.errors import AwsAccessDenied, AwsError, AwsNotFound, AwsThrottled, AwsUnavailable
from service.ingest.observe import config_location, imagebuilder_for_stack, observe_live

pytestmark = pytest.mark.asyncio

REGION = "us-east-1"
ARN = f"arn:aws:imagebuilder:{REGION}:123456789012:image/parallelclusterimage-img/3.9.0/1"
CONFIG_TAGS = (("parallelcluster:s3_bucket", "bucket"), ("parallelcluster:s3_image_dir", "dir"))
STACK = StackInfo(
    name="img", stack_id="stack-id", status="CREATE_IN_PROGRESS", creation_time=datetime(2026, 1, 1, tzinfo=UTC),
    tags=(("parallelcluster:image_id", "img"), *CONFIG_TAGS),
)
AMI_WITHOUT_CONFIG = AmiInfo(ami_id="ami-1", state="available", tags=(("parallelcluster:image_id", "img"),))
AMI = AmiInfo(ami_id="ami-1", state="available", tags=(("parallelcluster:image_id", "img"), *CONFIG_TAGS))

# What service.aws raises, by kind: answers (the resource is not there, not allowed, a rejected request)...
ANSWERS = [
    pytest.param(AwsNotFound("gone", code="ResourceNotFoundException"), id="not-found"),
    pytest.param(AwsAccessDenied("no", code="AccessDeniedException"), id="access-denied"),
    pytest.param(AwsError("bad", code="InvalidRequestException"), id="rejected"),
]
# ... and no answer at all.
NO_ANSWERS = [
    pytest.param(AwsThrottled("slow down", code="ThrottlingException"), id="throttled"),
    pytest.param(AwsThrottled("slow down", code="CallRateLimitExceededException"), id="imagebuilder-throttle"),
    pytest.param(AwsUnavailable("InternalFailure", code="InternalFailure"), id="5xx"),
    pytest.param(AwsUnavailable("Read timeout on endpoint URL"), id="timeout"),
    pytest.param(AwsUnavailable("Connection reset by peer"), id="reset"),
    pytest.param(AwsError("AWS did not answer in time", code="Timeout"), id="our-timeout"),
]


class Slow:
    """An answer that takes `seconds` to come."""

    def __init__(self, seconds: float, value: Any) -> None:
        self.seconds = seconds
        self.value = value


class StubAws:
    """service.aws.Aws's describe calls, each answering a value or raising the error it is given."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers

    async def _answer(self, name: str) -> Any:
        answer = self.answers[name]
        if isinstance(answer, Slow):
            await asyncio.sleep(answer.seconds)
            answer = answer.value
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def image_resource_arn(self, *, region: str, stack_name: str) -> str | None:
        return await self._answer("resource")  # type: ignore[no-any-return]

    async def imagebuilder_state(self, *, region: str, arn: str) -> ImagebuilderState:
        return await self._answer("image")  # type: ignore[no-any-return]

    async def account_id(self, *, region: str) -> str:
        return "123456789012"

    async def bucket_available(self, *, region: str, bucket: str) -> bool:
        return await self._answer("bucket")  # type: ignore[no-any-return]

    async def find_available_ami(self, *, region: str, image_id: str) -> AmiInfo | None:
        return await self._answer("ami")  # type: ignore[no-any-return]

    async def describe_stack(self, *, region: str, name: str) -> StackInfo | None:
        return await self._answer("stack")  # type: ignore[no-any-return]


@pytest.mark.parametrize("error", ANSWERS)
@pytest.mark.parametrize("call", ["resource", "image"])
async def test_an_image_builder_answer_is_both_fields_absent(call: str, error: AwsError) -> None:
    aws = StubAws(**{"resource": ARN, "image": ImagebuilderState(arn=ARN, status="BUILDING"), call: error})

    assert await imagebuilder_for_stack(aws, region=REGION, stack_name="img") == ImagebuilderState()  # type: ignore[arg-type]


@pytest.mark.parametrize("error", NO_ANSWERS)
@pytest.mark.parametrize("call", ["resource", "image"])
async def test_no_answer_from_image_builder_is_unknown(call: str, error: AwsError) -> None:
    aws = StubAws(**{"resource": ARN, "image": ImagebuilderState(arn=ARN, status="BUILDING"), call: error})

    assert await imagebuilder_for_stack(aws, region=REGION, stack_name="img") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bucket_answer", "location"),
    [
        pytest.param(True, ConfigLocation("bucket", "dir/configs/image-config.yaml", True), id="reachable"),
        pytest.param(False, ConfigLocation("bucket", "dir/configs/image-config.yaml", False), id="gone-or-forbidden"),
        *[
            pytest.param(error.values[0], ConfigLocation("bucket", "dir/configs/image-config.yaml", False), id=error.id)
            for error in ANSWERS
        ],
        *[pytest.param(error.values[0], None, id=error.id) for error in NO_ANSWERS],
    ],
)
async def test_the_config_location_is_a_fact_unless_s3_gave_no_answer(
    bucket_answer: Any, location: ConfigLocation | None
) -> None:
    aws = StubAws(bucket=bucket_answer)

    found = await config_location(aws, region=REGION, stack=STACK, ami=None)  # type: ignore[arg-type]

    assert found == location


async def test_a_bucket_that_gave_no_answer_is_asked_once_per_pass() -> None:
    aws = StubAws(bucket=AwsUnavailable("InternalError", code="InternalError"))
    reachable: dict[str, bool | None] = {}

    first = await config_location(aws, region=REGION, stack=STACK, ami=None, reachable=reachable)  # type: ignore[arg-type]
    aws.answers["bucket"] = True  # would answer now, but this pass already knows it did not
    second = await config_location(aws, region=REGION, stack=STACK, ami=None, reachable=reachable)  # type: ignore[arg-type]

    assert first is None and second is None
    assert reachable == {"bucket": None}


@pytest.mark.parametrize(
    ("answers", "unknown", "spoken"),
    [
        pytest.param(
            {"ami": None, "stack": STACK, "resource": ARN, "image": ImagebuilderState(ARN, "BUILDING"), "bucket": True},
            frozenset(), {"ami", "stack", "imagebuilder", "config"}, id="everything-answered",
        ),
        pytest.param(
            {"ami": None, "stack": STACK, "resource": ARN, "image": AwsThrottled("t", code="ThrottlingException"),
             "bucket": True},
            frozenset({PART_IMAGEBUILDER}), {"ami", "stack", "config"}, id="image-builder-throttled",
        ),
        pytest.param(
            {"ami": None, "stack": STACK, "resource": ARN, "image": AwsNotFound("n"), "bucket": True},
            frozenset(), {"ami", "stack", "imagebuilder", "config"}, id="image-builder-image-gone",
        ),
        pytest.param(
            {"ami": None, "stack": STACK, "resource": None, "bucket": AwsUnavailable("5xx", code="InternalError")},
            frozenset({PART_CONFIG}), {"ami", "stack", "imagebuilder"}, id="bucket-5xx",
        ),
        pytest.param({"ami": AMI, "bucket": True}, frozenset(), {"ami", "config"}, id="ami-path-needs-no-stack"),
        pytest.param(
            {"ami": AMI_WITHOUT_CONFIG, "stack": AwsUnavailable("reset"), "bucket": True},
            frozenset({PART_STACK, PART_CONFIG}), {"ami"}, id="ami-without-tags-stack-unreachable",
        ),
        pytest.param({"ami": None, "stack": None}, frozenset(), {"ami", "stack"}, id="neither-exists"),
    ],
)
async def test_a_live_observation_names_what_aws_did_not_answer(
    answers: dict[str, Any], unknown: frozenset[str], spoken: set[str]
) -> None:
    change = await observe_live(StubAws(**answers), region=REGION, image_id="img")  # type: ignore[arg-type]

    assert change.whole is True
    assert change.unknown == unknown
    parts = {"ami": change.ami, "stack": change.stack, "imagebuilder": change.imagebuilder, "config": change.config}
    assert {name for name, part in parts.items() if part is not None} == spoken


@pytest.mark.parametrize("error", [*NO_ANSWERS, *ANSWERS])
async def test_a_live_observation_that_cannot_say_whether_the_image_exists_raises(error: AwsError) -> None:
    with pytest.raises(AwsError):
        await observe_live(StubAws(ami=error), region=REGION, image_id="img")  # type: ignore[arg-type]


async def test_a_part_slower_than_the_deadline_is_unknown_and_the_rest_answers() -> None:
    aws = StubAws(ami=None, stack=STACK, resource=ARN, image=Slow(5, ImagebuilderState(ARN, "BUILDING")), bucket=True)
    deadline = asyncio.get_running_loop().time() + 0.2

    change = await observe_live(aws, region=REGION, image_id="img", deadline=deadline)  # type: ignore[arg-type]

    assert change.unknown == frozenset({PART_IMAGEBUILDER, PART_CONFIG})  # the bucket's turn came after the deadline
    assert change.stack is not None and change.stack.value == STACK
    assert asyncio.get_running_loop().time() - deadline < 0.5


async def test_cloudformation_slower_than_the_deadline_is_a_timeout() -> None:
    aws = StubAws(ami=None, stack=Slow(5, STACK))
    deadline = asyncio.get_running_loop().time() + 0.2

    with pytest.raises(AwsError) as raised:
        await observe_live(aws, region=REGION, image_id="img", deadline=deadline)  # type: ignore[arg-type]

    assert raised.value.code == "Timeout"
