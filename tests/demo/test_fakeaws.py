import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from service.demo.fakeaws import ACCOUNT_ID, DEFAULT_BUCKET, FakeAws

REGION = "us-east-1"
# One attempt: botocore would otherwise retry injected throttles and 5xx away.
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
PARALLELCLUSTER_FILTERS = [
    {"Name": "tag:parallelcluster:image_id", "Values": ["alinux2-done"]},
    {"Name": "tag:parallelcluster:build_status", "Values": ["available"]},
]


@pytest.fixture
def fake() -> Iterator[FakeAws]:
    with FakeAws() as started:
        yield started


def client(fake: FakeAws, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=fake.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


def test_image_stack_is_described_with_status_reason_and_parallelcluster_tags(fake: FakeAws) -> None:
    stack_id = fake.create_image_stack(
        region=REGION,
        image_id="rocky9-build",
        status="ROLLBACK_IN_PROGRESS",
        reason="The following resource(s) failed to create: [ParallelClusterImage].",
        extra_tags={"team": "hpc"},
    )

    (stack,) = client(fake, "cloudformation").describe_stacks(StackName="rocky9-build")["Stacks"]

    assert stack["StackId"] == stack_id
    assert stack["StackStatus"] == "ROLLBACK_IN_PROGRESS"
    assert stack["StackStatusReason"] == "The following resource(s) failed to create: [ParallelClusterImage]."
    tags = [(tag["Key"], tag["Value"]) for tag in stack["Tags"]]
    assert [key for key, _ in tags] == [
        "parallelcluster:image_id",
        "parallelcluster:version",
        "parallelcluster:image_name",
        "parallelcluster:s3_bucket",
        "parallelcluster:s3_image_dir",
        "parallelcluster:build_log",
        "parallelcluster:build_config",
        "team",
    ]
    values = dict(tags)
    assert values["parallelcluster:image_id"] == values["parallelcluster:image_name"] == "rocky9-build"
    assert values["parallelcluster:version"] == "3.9.0"
    assert values["parallelcluster:s3_bucket"] == DEFAULT_BUCKET
    assert re.fullmatch(
        r"parallelcluster/3\.9\.0/images/rocky9-build-[0-9a-f]{16}", values["parallelcluster:s3_image_dir"]
    )
    assert values["parallelcluster:build_log"] == (
        f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/imagebuilder/ParallelClusterImage-rocky9-build"
    )
    config_key = f"{values['parallelcluster:s3_image_dir']}/configs/image-config.yaml"
    assert values["parallelcluster:build_config"] == f"s3://{DEFAULT_BUCKET}/{config_key}"
    client(fake, "s3").head_object(Bucket=DEFAULT_BUCKET, Key=config_key)


def test_set_stack_status_changes_status_and_clears_reason(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="alinux2-x", reason="starting")
    fake.set_stack_status(region=REGION, stack_name="alinux2-x", status="CREATE_COMPLETE")

    (stack,) = client(fake, "cloudformation").describe_stacks(StackName="alinux2-x")["Stacks"]

    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert "StackStatusReason" not in stack


def test_stack_resource_links_to_the_imagebuilder_image(fake: FakeAws) -> None:
    fake.create_image_stack(
        region=REGION, image_id="Ubuntu-GPU", imagebuilder_status="FAILED", imagebuilder_reason="boom"
    )

    detail = client(fake, "cloudformation").describe_stack_resource(
        StackName="Ubuntu-GPU", LogicalResourceId="ParallelClusterImage"
    )["StackResourceDetail"]
    image = client(fake, "imagebuilder").get_image(imageBuildVersionArn=detail["PhysicalResourceId"])["image"]

    arn = f"arn:aws:imagebuilder:{REGION}:{ACCOUNT_ID}:image/parallelclusterimage-ubuntu-gpu/3.9.0/1"
    assert detail["PhysicalResourceId"] == arn == fake.imagebuilder_arn(region=REGION, image_id="Ubuntu-GPU")
    assert image["arn"] == arn
    assert image["name"] == "parallelclusterimage-ubuntu-gpu"
    assert image["version"] == "3.9.0"
    assert image["state"] == {"status": "FAILED", "reason": "boom"}


def test_imagebuilder_state_follows_put_and_delete(fake: FakeAws) -> None:
    arn = fake.imagebuilder_arn(region=REGION, image_id="img")
    imagebuilder = client(fake, "imagebuilder")

    fake.put_imagebuilder_image(arn, status="BUILDING")
    assert imagebuilder.get_image(imageBuildVersionArn=arn)["image"]["state"] == {"status": "BUILDING"}
    fake.put_imagebuilder_image(arn, status="AVAILABLE")
    assert imagebuilder.get_image(imageBuildVersionArn=arn)["image"]["state"] == {"status": "AVAILABLE"}
    fake.delete_imagebuilder_image(arn)
    with pytest.raises(ClientError) as raised:
        imagebuilder.get_image(imageBuildVersionArn=arn)
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_get_image_of_unknown_arn_is_resource_not_found(fake: FakeAws) -> None:
    arn = fake.imagebuilder_arn(region=REGION, image_id="nobody")

    with pytest.raises(ClientError) as raised:
        client(fake, "imagebuilder").get_image(imageBuildVersionArn=arn)

    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_stack_without_image_resource_has_no_parallelclusterimage(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="early", with_image_resource=False, bucket=None)
    cloudformation = client(fake, "cloudformation")

    with pytest.raises(ClientError) as raised:
        cloudformation.describe_stack_resource(StackName="early", LogicalResourceId="ParallelClusterImage")

    assert raised.value.response["Error"]["Code"] == "ValidationError"
    (stack,) = cloudformation.describe_stacks(StackName="early")["Stacks"]
    keys = [tag["Key"] for tag in stack["Tags"]]
    assert "parallelcluster:s3_bucket" not in keys
    assert "parallelcluster:build_config" not in keys


def test_deleted_stack_is_no_longer_described_by_name(fake: FakeAws) -> None:
    stack_id = fake.create_image_stack(region=REGION, image_id="gone", status="CREATE_COMPLETE")
    cloudformation = client(fake, "cloudformation")

    fake.delete_stack(region=REGION, stack_name="gone")

    with pytest.raises(ClientError) as raised:
        cloudformation.describe_stacks(StackName="gone")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert cloudformation.describe_stacks()["Stacks"] == []
    (by_id,) = cloudformation.describe_stacks(StackName=stack_id)["Stacks"]
    assert by_id["StackStatus"] == "DELETE_COMPLETE"
    # The image id can be built again.
    fake.create_image_stack(region=REGION, image_id="gone")
    assert cloudformation.describe_stacks(StackName="gone")["Stacks"][0]["StackId"] != stack_id


@pytest.mark.slow
def test_ami_is_found_by_the_parallelcluster_filter(fake: FakeAws) -> None:
    ami_id = fake.create_ami(
        region=REGION, image_id="alinux2-done", name="alinux2-done 2024-05-01", architecture="arm64"
    )
    fake.create_ami(region=REGION, image_id="alinux2-done", build_status="failed")
    fake.create_ami(region=REGION, image_id="other")
    ec2 = client(fake, "ec2")

    (image,) = ec2.describe_images(Owners=["self"], Filters=PARALLELCLUSTER_FILTERS)["Images"]

    assert image["ImageId"] == ami_id
    assert image["Name"] == "alinux2-done 2024-05-01"
    assert image["Description"] == "AWS ParallelCluster AMI for alinux2"
    assert image["Architecture"] == "arm64"
    assert image["State"] == "available"
    assert image["OwnerId"] == ACCOUNT_ID
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", image["CreationDate"])
    tags = {tag["Key"]: tag["Value"] for tag in image["Tags"]}
    assert tags["parallelcluster:version"] == "3.9.0"
    assert tags["parallelcluster:image_name"] == "alinux2-done"
    assert tags["parallelcluster:s3_bucket"] == DEFAULT_BUCKET
    assert tags["parallelcluster:s3_image_dir"].startswith("parallelcluster/3.9.0/images/alinux2-done-")
    assert tags["parallelcluster:build_log"].endswith(":log-group:/aws/imagebuilder/ParallelClusterImage-alinux2-done")


def test_ami_state_and_deregistration(fake: FakeAws) -> None:
    ami_id = fake.create_ami(region=REGION, image_id="alinux2-done")
    ec2 = client(fake, "ec2")

    fake.set_ami_state(region=REGION, ami_id=ami_id, state="pending")
    (image,) = ec2.describe_images(Owners=["self"], Filters=PARALLELCLUSTER_FILTERS)["Images"]
    assert image["State"] == "pending"
    fake.deregister_ami(region=REGION, ami_id=ami_id)
    assert ec2.describe_images(Owners=["self"], Filters=PARALLELCLUSTER_FILTERS)["Images"] == []


def test_calls_are_counted_per_service_and_operation(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="counted")
    arn = fake.imagebuilder_arn(region=REGION, image_id="counted")
    sqs = client(fake, "sqs")
    s3 = client(fake, "s3")
    queue_url = sqs.create_queue(QueueName="events")["QueueUrl"]
    fake.reset_calls()

    client(fake, "cloudformation").describe_stacks(StackName="counted")
    client(fake, "cloudformation").describe_stack_resource(
        StackName="counted", LogicalResourceId="ParallelClusterImage"
    )
    client(fake, "imagebuilder").get_image(imageBuildVersionArn=arn)
    client(fake, "ec2").describe_images(Owners=["self"])
    client(fake, "sts").get_caller_identity()
    sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
    s3.head_bucket(Bucket=DEFAULT_BUCKET)
    s3.head_bucket(Bucket=DEFAULT_BUCKET)
    s3.list_objects_v2(Bucket=DEFAULT_BUCKET)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": DEFAULT_BUCKET, "Key": "missing"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url)

    assert fake.calls == {
        "cloudformation.DescribeStacks": 1,
        "cloudformation.DescribeStackResource": 1,
        "imagebuilder.GetImage": 1,
        "ec2.DescribeImages": 1,
        "sts.GetCallerIdentity": 1,
        "sqs.ReceiveMessage": 1,
        "s3.HeadBucket": 2,
        "s3.ListObjectsV2": 1,
        "s3.PresignedGet": 1,
    }
    assert fake.total_calls() == 10
    assert fake.total_calls("s3") == 4
    assert fake.total_calls("cloudformation") == 2
    fake.reset_calls()
    assert fake.total_calls() == 0


def test_builders_are_not_aws_calls(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="quiet")
    fake.create_ami(region=REGION, image_id="quiet")
    fake.set_stack_status(region=REGION, stack_name="quiet", status="CREATE_COMPLETE")
    fake.delete_stack(region=REGION, stack_name="quiet")

    assert fake.total_calls() == 0


@pytest.mark.parametrize(
    ("service", "operation", "code", "status"),
    [
        ("cloudformation", "DescribeStacks", "Throttling", 400),
        ("imagebuilder", "GetImage", "CallRateLimitExceededException", 429),
        ("ec2", "DescribeImages", "RequestLimitExceeded", 503),
        ("s3", "GetObject", "SlowDown", 503),
        ("sqs", "ReceiveMessage", "AWS.SimpleQueueService.NonExistentQueue", 400),
    ],
)
def test_fail_next_fails_exactly_the_next_call(
    fake: FakeAws, service: str, operation: str, code: str, status: int
) -> None:
    fake.create_image_stack(region=REGION, image_id="flaky")
    arn = fake.imagebuilder_arn(region=REGION, image_id="flaky")
    aws = client(fake, service)
    queue_url = client(fake, "sqs").create_queue(QueueName="q")["QueueUrl"]
    objects = client(fake, "s3").list_objects_v2(Bucket=DEFAULT_BUCKET)["Contents"]
    config_key = objects[0]["Key"]
    call: Callable[[], object] = {
        "cloudformation": lambda: aws.describe_stacks(StackName="flaky"),
        "imagebuilder": lambda: aws.get_image(imageBuildVersionArn=arn),
        "ec2": lambda: aws.describe_images(Owners=["self"]),
        "s3": lambda: aws.get_object(Bucket=DEFAULT_BUCKET, Key=config_key),
        "sqs": lambda: aws.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0),
    }[service]

    fake.fail_next(f"{service}.{operation}", code=code, status=status)

    with pytest.raises(ClientError) as raised:
        call()
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert raised.value.operation_name == operation
    call()
    assert fake.calls[f"{service}.{operation}"] == 2


def test_fail_next_times_and_other_operations_unaffected(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="flaky")
    cloudformation = client(fake, "cloudformation")
    fake.fail_next("cloudformation.DescribeStacks", times=2)

    cloudformation.describe_stack_resource(StackName="flaky", LogicalResourceId="ParallelClusterImage")
    for _ in range(2):
        with pytest.raises(ClientError, match="Rate exceeded"):
            cloudformation.describe_stacks(StackName="flaky")
    cloudformation.describe_stacks(StackName="flaky")


def test_fail_all_answers_every_call_until_recover(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="down")
    arn = fake.imagebuilder_arn(region=REGION, image_id="down")
    sts = client(fake, "sts")
    imagebuilder = client(fake, "imagebuilder")
    s3 = client(fake, "s3")

    fake.fail_all()

    for call in (
        sts.get_caller_identity,
        lambda: imagebuilder.get_image(imageBuildVersionArn=arn),
        lambda: s3.head_bucket(Bucket=DEFAULT_BUCKET),
    ):
        with pytest.raises(ClientError) as raised:
            call()
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert fake.total_calls() == 3
    fake.recover()
    assert sts.get_caller_identity()["Account"] == ACCOUNT_ID
    assert imagebuilder.get_image(imageBuildVersionArn=arn)["image"]["state"]["status"] == "BUILDING"


def test_aws_endpoint_url_from_the_environment_is_honoured(fake: FakeAws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    fake.create_image_stack(region="eu-west-1", image_id="from-env")
    session = boto3.session.Session(region_name="eu-west-1")

    stacks = session.client("cloudformation").describe_stacks(StackName="from-env")["Stacks"]
    session.client("s3").head_bucket(Bucket=DEFAULT_BUCKET)
    arn = fake.imagebuilder_arn(region="eu-west-1", image_id="from-env")
    session.client("imagebuilder").get_image(imageBuildVersionArn=arn)

    assert stacks[0]["StackName"] == "from-env"
    assert fake.calls == {"cloudformation.DescribeStacks": 1, "s3.HeadBucket": 1, "imagebuilder.GetImage": 1}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_aiobotocore_clients_work(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="async-one", status="CREATE_COMPLETE")
    fake.create_ami(region=REGION, image_id="async-one")
    arn = fake.imagebuilder_arn(region=REGION, image_id="async-one")
    options: dict[str, Any] = {
        "region_name": REGION,
        "endpoint_url": fake.endpoint_url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "config": AioConfig(retries={"total_max_attempts": 1, "mode": "standard"}),
    }
    session = get_session()

    async with (
        session.create_client("cloudformation", **options) as cloudformation,
        session.create_client("imagebuilder", **options) as imagebuilder,
        session.create_client("ec2", **options) as ec2,
        session.create_client("s3", **options) as s3,
    ):
        stacks = (await cloudformation.describe_stacks(StackName="async-one"))["Stacks"]
        image = (await imagebuilder.get_image(imageBuildVersionArn=arn))["image"]
        filters = [{"Name": "tag:parallelcluster:image_id", "Values": ["async-one"]}]
        amis = (await ec2.describe_images(Owners=["self"], Filters=filters))["Images"]
        await s3.head_bucket(Bucket=DEFAULT_BUCKET)
        fake.fail_next("imagebuilder.GetImage", code="CallRateLimitExceededException", status=429)
        with pytest.raises(ClientError) as raised:
            await imagebuilder.get_image(imageBuildVersionArn=arn)

    assert stacks[0]["StackStatus"] == "CREATE_COMPLETE"
    assert image["state"]["status"] == "BUILDING"
    assert len(amis) == 1
    assert raised.value.response["Error"]["Code"] == "CallRateLimitExceededException"
    assert fake.total_calls() == 5


def test_fail_always_fails_one_operation_until_recover(fake: FakeAws) -> None:
    fake.create_image_stack(region=REGION, image_id="always")
    cloudformation = client(fake, "cloudformation")
    s3 = client(fake, "s3")

    fake.fail_always("cloudformation.DescribeStacks", code="InternalFailure", status=500)

    for _ in range(3):
        with pytest.raises(ClientError) as raised:
            cloudformation.describe_stacks(StackName="always")
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    s3.head_bucket(Bucket=DEFAULT_BUCKET)  # other operations answer
    fake.recover()
    assert cloudformation.describe_stacks(StackName="always")["Stacks"][0]["StackName"] == "always"
