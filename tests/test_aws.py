"""The AWS seam: botocore errors translated to the service's own, plain data out, Image Builder's throttle retried."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import pytest

from service.aws import Aws, ami_from_api, default_bucket_name, stack_from_api, translate
from service.demo.fakeaws import FakeAws
from service.domain.models import AmiInfo, ImagebuilderState, StackInfo
from service.errors import AwsAccessDenied, AwsError, AwsNotFound, AwsThrottled, AwsUnavailable

REGION = "us-east-1"


def client_error(code: str, message: str = "", status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


# --- translate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(client_error("Throttling", "Rate exceeded"), AwsThrottled, id="Throttling"),
        pytest.param(client_error("ThrottlingException", "Rate exceeded"), AwsThrottled, id="ThrottlingException"),
        pytest.param(client_error("RequestLimitExceeded", "Request limit exceeded."), AwsThrottled, id="ec2"),
        pytest.param(client_error("CallRateLimitExceededException", status=429), AwsThrottled, id="imagebuilder-429"),
        pytest.param(client_error("CallRateLimitExceededException", status=400), AwsThrottled, id="imagebuilder-400"),
        pytest.param(client_error("SlowDown", status=503), AwsThrottled, id="s3-slowdown-503"),
        pytest.param(client_error("SomethingNew", "too many", status=429), AwsThrottled, id="http-429"),
        pytest.param(client_error("", status=429), AwsThrottled, id="http-429-no-code"),
        pytest.param(client_error("AccessDenied", status=403), AwsAccessDenied, id="AccessDenied"),
        pytest.param(client_error("AccessDeniedException"), AwsAccessDenied, id="AccessDeniedException"),
        pytest.param(client_error("UnauthorizedOperation"), AwsAccessDenied, id="UnauthorizedOperation"),
        pytest.param(client_error("ExpiredToken"), AwsAccessDenied, id="ExpiredToken"),
        pytest.param(client_error("InvalidClientTokenId", status=403), AwsAccessDenied, id="InvalidClientTokenId"),
        pytest.param(client_error("403", status=403), AwsAccessDenied, id="s3-head-403"),
        pytest.param(client_error("Forbidden", status=403), AwsAccessDenied, id="http-403"),
        pytest.param(client_error("ResourceNotFoundException", status=404), AwsNotFound, id="imagebuilder-missing"),
        pytest.param(client_error("NoSuchBucket", status=404), AwsNotFound, id="NoSuchBucket"),
        pytest.param(client_error("NoSuchKey", status=404), AwsNotFound, id="NoSuchKey"),
        pytest.param(client_error("404", status=404), AwsNotFound, id="s3-head-404"),
        pytest.param(
            client_error("ValidationError", "Stack with id x does not exist"), AwsNotFound, id="cloudformation-stack"
        ),
        pytest.param(
            client_error("ValidationError", "Resource ParallelClusterImage does not exist for stack x"),
            AwsNotFound,
            id="cloudformation-resource",
        ),
        pytest.param(client_error("InternalFailure", status=500), AwsUnavailable, id="http-500"),
        pytest.param(client_error("ServiceUnavailable", status=503), AwsUnavailable, id="http-503"),
        pytest.param(client_error("GatewayTimeout", status=504), AwsUnavailable, id="http-504"),
        pytest.param(
            botocore.exceptions.EndpointConnectionError(endpoint_url="https://cloudformation.us-east-1.amazonaws.com"),
            AwsUnavailable,
            id="EndpointConnectionError",
        ),
        pytest.param(
            botocore.exceptions.ReadTimeoutError(endpoint_url="https://imagebuilder.us-east-1.amazonaws.com"),
            AwsUnavailable,
            id="ReadTimeoutError",
        ),
        pytest.param(TimeoutError(), AwsUnavailable, id="TimeoutError"),
        pytest.param(ConnectionResetError("reset by peer"), AwsUnavailable, id="OSError"),
        pytest.param(botocore.exceptions.NoCredentialsError(), AwsAccessDenied, id="NoCredentialsError"),
        pytest.param(client_error("ValidationError", "1 validation error detected"), AwsError, id="validation"),
        pytest.param(client_error("InvalidParameterValueException"), AwsError, id="invalid-parameter"),
        pytest.param(client_error("InvalidRequestException"), AwsError, id="invalid-request"),
        pytest.param(client_error("SomethingElse", status=409), AwsError, id="other-4xx"),
    ],
)
def test_translate_picks_the_most_specific_error(exc: BaseException, expected: type[AwsError]) -> None:
    error = translate(exc, operation="cloudformation.DescribeStacks")

    assert type(error) is expected
    assert error.operation == "cloudformation.DescribeStacks"
    assert error.message


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        pytest.param(client_error("Throttling", "Rate exceeded"), "Throttling", "Rate exceeded", id="with-message"),
        pytest.param(
            client_error("ValidationError", "Stack with id x does not exist"),
            "ValidationError",
            "Stack with id x does not exist",
            id="not-found",
        ),
    ],
)
def test_translated_client_error_keeps_code_and_message(exc: BaseException, code: str, message: str) -> None:
    error = translate(exc, operation="op")

    assert error.code == code
    assert error.message == message


def test_translated_client_error_without_message_says_something() -> None:
    error = translate(client_error("InternalFailure", "", status=500), operation="op")

    assert error.message
    assert "InternalFailure" in error.message


# --- default_bucket_name ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account_id", "region"),
    [("123456789012", "us-east-1"), ("123456789012", "eu-west-1"), ("000000000000", "us-gov-west-1")],
)
def test_default_bucket_name_is_parallelclusters(account_id: str, region: str) -> None:
    digest = hashlib.sha256((account_id + region).encode()).hexdigest()[:16]

    assert default_bucket_name(account_id=account_id, region=region) == f"parallelcluster-{digest}-v1-do-not-delete"


def test_default_bucket_name_for_the_example_account() -> None:
    assert (
        default_bucket_name(account_id="123456789012", region="us-east-1")
        == "parallelcluster-" + hashlib.sha256(b"123456789012us-east-1").hexdigest()[:16] + "-v1-do-not-delete"
        == "parallelcluster-89e4e5f1cd12e98b-v1-do-not-delete"
    )


# --- stack_from_api / ami_from_api ------------------------------------------------------------

CREATED = datetime(2022, 3, 30, 23, 23, 33, 731000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {
                "StackName": "img",
                "StackId": "arn:stack/img/1",
                "StackStatus": "ROLLBACK_COMPLETE",
                "StackStatusReason": "failed",
                "CreationTime": CREATED,
                "Tags": [{"Key": "parallelcluster:version", "Value": "3.9.0"}, {"Key": "a", "Value": ""}],
                "Outputs": [],
            },
            StackInfo(
                name="img",
                stack_id="arn:stack/img/1",
                status="ROLLBACK_COMPLETE",
                creation_time=CREATED,
                tags=(("parallelcluster:version", "3.9.0"), ("a", "")),
                status_reason="failed",
            ),
            id="full",
        ),
        pytest.param(
            {"StackName": "img", "StackId": "id", "StackStatus": "CREATE_COMPLETE", "CreationTime": CREATED},
            StackInfo("img", "id", "CREATE_COMPLETE", CREATED),
            id="minimal",
        ),
    ],
)
def test_stack_from_api_is_plain_data(raw: dict[str, Any], expected: StackInfo) -> None:
    assert stack_from_api(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {
                "ImageId": "ami-1",
                "State": "available",
                "Name": "img 2022",
                "Description": "d",
                "Architecture": "arm64",
                "CreationDate": "2022-03-30T23:23:33.000Z",
                "Tags": [{"Key": "k", "Value": "v"}],
            },
            AmiInfo("ami-1", "available", (("k", "v"),), "img 2022", "d", "arm64", "2022-03-30T23:23:33.000Z"),
            id="full",
        ),
        pytest.param({"ImageId": "ami-2"}, AmiInfo("ami-2", ""), id="minimal"),
    ],
)
def test_ami_from_api_is_plain_data(raw: dict[str, Any], expected: AmiInfo) -> None:
    assert ami_from_api(raw) == expected


# --- Aws.imagebuilder_state against the local fake AWS ----------------------------------------


def imagebuilder_arn(image_id: str) -> str:
    return f"arn:aws:imagebuilder:{REGION}:123456789012:image/parallelclusterimage-{image_id}/3.9.0/1"


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "reason"), [("BUILDING", None), ("AVAILABLE", None), ("FAILED", "Build timed out")])
async def test_imagebuilder_state_reads_get_image(aws_state: FakeAws, status: str, reason: str | None) -> None:
    arn = imagebuilder_arn("build")
    aws_state.put_imagebuilder_image(arn, status=status, reason=reason)
    aws = Aws()
    try:
        state = await aws.imagebuilder_state(region=REGION, arn=arn)
    finally:
        await aws.close()

    assert state == ImagebuilderState(arn=arn, status=status, reason=reason)
    assert aws_state.calls["imagebuilder.GetImage"] == 1


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("throttles", [1, 2, 3])
async def test_imagebuilder_state_retries_call_rate_limit_exceeded(aws_state: FakeAws, throttles: int) -> None:
    arn = imagebuilder_arn("busy")
    aws_state.put_imagebuilder_image(arn, status="BUILDING")
    aws_state.fail_next("imagebuilder.GetImage", code="CallRateLimitExceededException", times=throttles)
    aws = Aws()
    try:
        state = await aws.imagebuilder_state(region=REGION, arn=arn)
    finally:
        await aws.close()

    assert state == ImagebuilderState(arn=arn, status="BUILDING")
    assert aws_state.calls["imagebuilder.GetImage"] == throttles + 1


@pytest.mark.slow
@pytest.mark.asyncio
async def test_imagebuilder_state_gives_up_after_four_throttles(aws_state: FakeAws) -> None:
    arn = imagebuilder_arn("busy")
    aws_state.put_imagebuilder_image(arn, status="BUILDING")
    aws_state.fail_next("imagebuilder.GetImage", code="CallRateLimitExceededException", times=4)
    aws = Aws()
    try:
        with pytest.raises(AwsThrottled) as raised:
            await aws.imagebuilder_state(region=REGION, arn=arn)
    finally:
        await aws.close()

    assert raised.value.code == "CallRateLimitExceededException"
    assert raised.value.operation == "imagebuilder.GetImage"
    assert aws_state.calls["imagebuilder.GetImage"] == 4


@pytest.mark.asyncio
async def test_imagebuilder_state_of_an_unknown_arn_has_no_status(aws_state: FakeAws) -> None:
    arn = imagebuilder_arn("never-built")
    aws = Aws()
    try:
        state = await aws.imagebuilder_state(region=REGION, arn=arn)
    finally:
        await aws.close()

    assert state == ImagebuilderState(arn=arn, status=None)
    assert state.reason is None
    assert aws_state.calls["imagebuilder.GetImage"] == 1
