"""Seeds a remote AWS endpoint (the compose stack's moto server) with ParallelCluster-style images, via AWS APIs only.

Unlike service/fakeaws.py, nothing here touches moto's in-process backends: every write is a boto3 call,
so it works against any endpoint (moto in a container, LocalStack). Running it twice changes nothing.

    python -m service.demo.seeding --endpoint-url http://moto:5000 --region us-east-1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.exceptions

from service.aws import default_bucket_name
from service.domain.models import IMAGE_RESOURCE_LOGICAL_ID, TAG_BUILD_STATUS, TAG_IMAGE_ID

log = logging.getLogger(__name__)

DEFAULT_QUEUE_NAME = "statuscache-events"
RULE_NAME = "statuscache-image-events"
VERSION = "3.9.0"
IMAGE_CONFIG = b"Build:\n  InstanceType: c5.xlarge\n  ParentImage: ami-0123456789abcdef0\n"

# The queue as deploy/events.yaml creates it (tests/test_compose.py holds the two together).
QUEUE_ATTRIBUTES = {
    "VisibilityTimeout": "120",
    "MessageRetentionPeriod": "345600",
    "ReceiveMessageWaitTimeSeconds": "20",
}
DLQ_MAX_RECEIVE_COUNT = 5
TARGET_ID = "statuscache-queue"


def event_pattern(*, partition: str, region: str, account_id: str) -> dict[str, Any]:
    """deploy/events.yaml's rule pattern, its Fn::Sub resolved: the four detail-types the consumer reads
    (service/domain/events.py), narrowed."""
    imagebuilder_prefix = f"arn:{partition}:imagebuilder:{region}:{account_id}:image/parallelclusterimage-"
    return {
        "$or": [
            {"source": ["aws.cloudformation"], "detail-type": ["CloudFormation Stack Status Change"]},
            {
                "source": ["aws.cloudformation"],
                "detail-type": ["CloudFormation Resource Status Change"],
                "detail": {"logical-resource-id": [IMAGE_RESOURCE_LOGICAL_ID]},
            },
            {
                "source": ["aws.imagebuilder"],
                "detail-type": ["EC2 Image Builder Image State Change"],
                "resources": [{"prefix": imagebuilder_prefix}],
            },
            {"source": ["aws.ec2"], "detail-type": ["EC2 AMI State Change"]},
        ]
    }


@dataclass(frozen=True)
class SeedImage:
    image_id: str
    # A build stack still exists (moto creates it CREATE_COMPLETE).
    stack: bool
    # The AMI is registered and tagged build_status=available.
    ami: bool
    description: str = "AWS ParallelCluster AMI for alinux2"


SEED_IMAGES: tuple[SeedImage, ...] = (
    # Built earlier; ParallelCluster already deleted its stack.
    SeedImage("compose-alinux2-hpc", stack=False, ami=True, description="AWS ParallelCluster AMI for alinux2"),
    # Just built: AMI registered, stack not yet cleaned up.
    SeedImage("compose-ubuntu2204-gpu", stack=True, ami=True, description="AWS ParallelCluster AMI for ubuntu2204"),
    # Only a stack: described through the stack path.
    SeedImage("compose-rocky9-stack", stack=True, ami=False, description="AWS ParallelCluster AMI for rocky9"),
)


@dataclass(frozen=True)
class SeedResult:
    image_ids: tuple[str, ...]
    queue_url: str


def parallelcluster_tags(*, account_id: str, region: str, image_id: str, version: str, bucket: str) -> dict[str, str]:
    """The tags ParallelCluster puts on an image build stack, in its order (the shape of fakeaws's)."""
    # Deterministic per image, so the stack and the AMI of one build agree, and a rerun writes the same keys.
    suffix = hashlib.sha256(f"{region}/{image_id}".encode()).hexdigest()[:16]
    image_dir = f"parallelcluster/{version}/images/{image_id.lower()}-{suffix}"
    return {
        TAG_IMAGE_ID: image_id,
        "parallelcluster:version": version,
        "parallelcluster:image_name": image_id,
        "parallelcluster:s3_bucket": bucket,
        "parallelcluster:s3_image_dir": image_dir,
        "parallelcluster:build_log": (
            f"arn:aws:logs:{region}:{account_id}:log-group:/aws/imagebuilder/ParallelClusterImage-{image_id}"
        ),
        "parallelcluster:build_config": f"s3://{bucket}/{image_dir}/configs/image-config.yaml",
    }


def ami_tags(stack_tags: Mapping[str, str]) -> dict[str, str]:
    """The tags ParallelCluster's Image Builder distribution puts on the finished AMI."""
    keys = (
        TAG_IMAGE_ID,
        "parallelcluster:version",
        "parallelcluster:image_name",
        "parallelcluster:s3_bucket",
        "parallelcluster:s3_image_dir",
        "parallelcluster:build_log",
    )
    return {key: stack_tags[key] for key in keys} | {TAG_BUILD_STATUS: "available"}


# The stack's one resource: moto cannot create AWS::ImageBuilder::Image, and the moto server compose runs has no
# Image Builder to answer GetImage (it answers 500, which the service rightly takes for "not known yet" and keeps
# asking). So the seeded builds have no ParallelClusterImage, as a build before that resource exists: describe
# leaves the Image Builder fields out, as a fact.
SEED_RESOURCE_LOGICAL_ID = "BuildLogGroup"


def image_template(image_id: str) -> str:
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"AWS ParallelCluster image build stack for {image_id}",
        "Resources": {SEED_RESOURCE_LOGICAL_ID: {"Type": "AWS::Logs::LogGroup", "Properties": {}}},
    }
    return json.dumps(template)


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _as_tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


class _Seeder:
    def __init__(self, *, session: Any, endpoint_url: str, region: str) -> None:
        def client(service: str) -> Any:
            return session.client(service, region_name=region, endpoint_url=endpoint_url)

        self.region = region
        self.cloudformation = client("cloudformation")
        self.ec2 = client("ec2")
        self.s3 = client("s3")
        self.sqs = client("sqs")
        self.events = client("events")
        identity = client("sts").get_caller_identity()
        self.account_id = str(identity["Account"])
        self.partition = str(identity["Arn"]).split(":")[1]

    def bucket(self, name: str) -> None:
        try:
            self.s3.head_bucket(Bucket=name)
            return
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        params: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self.s3.create_bucket(**params)

    def image_config(self, *, bucket: str, image_dir: str) -> None:
        self.s3.put_object(Bucket=bucket, Key=f"{image_dir}/configs/image-config.yaml", Body=IMAGE_CONFIG)

    def stack(self, *, image_id: str, tags: Mapping[str, str]) -> None:
        try:
            stacks = self.cloudformation.describe_stacks(StackName=image_id)["Stacks"]
        except botocore.exceptions.ClientError as exc:
            # CloudFormation says "does not exist" with a ValidationError, not a 404.
            if _error_code(exc) != "ValidationError":
                raise
            stacks = []
        if any(stack["StackStatus"] != "DELETE_COMPLETE" for stack in stacks):
            return
        self.cloudformation.create_stack(
            StackName=image_id, TemplateBody=image_template(image_id), Tags=_as_tag_list(tags)
        )

    def ami(self, *, image: SeedImage, tags: Mapping[str, str]) -> str:
        found = self.ec2.describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{TAG_IMAGE_ID}", "Values": [image.image_id]}]
        )["Images"]
        if found:
            ami_id = str(found[0]["ImageId"])
        else:
            # ParallelCluster names the AMI after the image id and Image Builder's build date.
            name = f"{image.image_id} {datetime.now(UTC):%Y-%m-%dT%H-%M-%S}.000Z"
            ami_id = str(
                self.ec2.register_image(
                    Name=name,
                    Description=image.description,
                    Architecture="x86_64",
                    RootDeviceName="/dev/xvda",
                    VirtualizationType="hvm",
                )["ImageId"]
            )
        # Tagging is idempotent, so a rerun also repairs tags.
        self.ec2.create_tags(Resources=[ami_id], Tags=_as_tag_list(ami_tags(tags)))
        return ami_id

    def _create_queue(self, name: str, attributes: Mapping[str, str]) -> tuple[str, str]:
        # CreateQueue with the attributes the queue already has returns it; that is the idempotence.
        url = str(self.sqs.create_queue(QueueName=name, Attributes=dict(attributes))["QueueUrl"])
        arn = str(self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
        return url, arn

    def queue(self, name: str) -> tuple[str, str]:
        """The events queue and its dead-letter queue, as deploy/events.yaml makes them."""
        _, dlq_arn = self._create_queue(f"{name}-dlq", {"MessageRetentionPeriod": "1209600"})
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(DLQ_MAX_RECEIVE_COUNT)}
        return self._create_queue(name, {**QUEUE_ATTRIBUTES, "RedrivePolicy": json.dumps(redrive)})

    def event_rule(self, *, queue_url: str, queue_arn: str) -> None:
        rule_arn = self.events.put_rule(
            Name=RULE_NAME,
            EventPattern=json.dumps(
                event_pattern(partition=self.partition, region=self.region, account_id=self.account_id)
            ),
            State="ENABLED",
            Description="ParallelCluster custom-image state changes for statuscache",
        )["RuleArn"]
        # EventBridge may deliver to the queue only if the queue's policy says so.
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AllowStatuscacheRuleToSend",
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                }
            ],
        }
        self.sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
        # A fixed target id makes PutTargets replace rather than add.
        self.events.put_targets(Rule=RULE_NAME, Targets=[{"Id": TARGET_ID, "Arn": queue_arn}])


def seed_via_api(
    *,
    endpoint_url: str,
    region: str = "us-east-1",
    queue_name: str = DEFAULT_QUEUE_NAME,
    images: tuple[SeedImage, ...] = SEED_IMAGES,
) -> SeedResult:
    """Create (or find) the images, their S3 configuration, the events queue and the rule feeding it."""
    session = boto3.session.Session()
    if session.get_credentials() is None:
        # A fake endpoint accepts any signature; this tool never targets real AWS (an endpoint is required).
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    seeder = _Seeder(session=session, endpoint_url=endpoint_url, region=region)
    bucket = default_bucket_name(account_id=seeder.account_id, region=region)
    seeder.bucket(bucket)
    for image in images:
        tags = parallelcluster_tags(
            account_id=seeder.account_id, region=region, image_id=image.image_id, version=VERSION, bucket=bucket
        )
        seeder.image_config(bucket=bucket, image_dir=tags["parallelcluster:s3_image_dir"])
        if image.stack:
            seeder.stack(image_id=image.image_id, tags=tags)
        if image.ami:
            ami_id = seeder.ami(image=image, tags=tags)
            log.info("seeded %s: AMI %s%s", image.image_id, ami_id, " and stack" if image.stack else "")
        else:
            log.info("seeded %s: stack", image.image_id)
    queue_url, queue_arn = seeder.queue(queue_name)
    seeder.event_rule(queue_url=queue_url, queue_arn=queue_arn)
    return SeedResult(image_ids=tuple(image.image_id for image in images), queue_url=queue_url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.demo.seeding", description="Seed an AWS endpoint with ParallelCluster-style images."
    )
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help="env AWS_ENDPOINT_URL")
    parser.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        help="env AWS_REGION, AWS_DEFAULT_REGION",
    )
    parser.add_argument("--queue-name", default=DEFAULT_QUEUE_NAME)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.endpoint_url:
        # Seeding real AWS is never what anyone wants from this tool.
        parser.error("--endpoint-url or AWS_ENDPOINT_URL is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = seed_via_api(endpoint_url=args.endpoint_url, region=args.region, queue_name=args.queue_name)
    log.info("seeded %s at %s", ", ".join(result.image_ids), args.endpoint_url)
    print(result.queue_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
