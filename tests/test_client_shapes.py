"""The client's shapes: the seed's Python example (snake_case, datetimes) and the order `pcluster` prints."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.client.shapes import pcluster_describe, pcluster_list, pythonic, to_snake_case

STACK_DOCUMENT = {
    "imageConfiguration": {"url": "https://bucket.s3.amazonaws.com/parallelcluster/3.2.1/images/x/configs/image-config.yaml"},
    "imageId": "custom-image-id",
    "imagebuilderImageStatus": "PENDING",
    "imageBuildStatus": "BUILD_IN_PROGRESS",
    "cloudformationStackStatus": "CREATE_IN_PROGRESS",
    "cloudformationStackArn": "arn:aws:cloudformation:us-east-1:123456789012:stack/custom-image-id/6accc570",
    "region": "us-east-1",
    "version": "3.2.1",
    "cloudformationStackTags": [
        {"key": "parallelcluster:version", "value": "3.2.1"},
        {"key": "parallelcluster:image_name", "value": "custom-image-id"},
    ],
    "imageBuildLogsArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/imagebuilder/ParallelClusterImage-x",
    "cloudformationStackCreationTime": "2022-03-30T23:23:33.731Z",
}
AMI_DOCUMENT = {
    "imageConfiguration": {"url": "NOT_AVAILABLE"},
    "imageId": "done",
    "creationTime": "2022-03-31T01:02:03.000Z",
    "imageBuildStatus": "BUILD_COMPLETE",
    "region": "us-east-1",
    "ec2AmiInfo": {
        "amiName": "done 2022", "amiId": "ami-0123", "state": "AVAILABLE",
        "tags": [{"key": "parallelcluster:image_id", "value": "done"}], "architecture": "x86_64",
    },
    "version": "3.2.1",
}  # fmt: skip


@pytest.mark.parametrize(
    ("camel", "snake"),
    [
        ("imageId", "image_id"),
        ("ec2AmiInfo", "ec2_ami_info"),
        ("amiId", "ami_id"),
        ("imagebuilderImageStatusReason", "imagebuilder_image_status_reason"),
        ("cloudformationStackTags", "cloudformation_stack_tags"),
        ("imageBuildLogsArn", "image_build_logs_arn"),
        ("cloudformationStackCreationTime", "cloudformation_stack_creation_time"),
        ("nextToken", "next_token"),
        ("observedTime", "observed_time"),
        ("key", "key"),
    ],
)
def test_keys_become_pclusters_snake_case(camel: str, snake: str) -> None:
    assert to_snake_case(camel) == snake


def test_a_stack_document_becomes_the_seeds_python_example() -> None:
    assert pythonic(STACK_DOCUMENT) == {
        "image_configuration": {"url": STACK_DOCUMENT["imageConfiguration"]["url"]},  # type: ignore[index]
        "image_id": "custom-image-id",
        "imagebuilder_image_status": "PENDING",
        "image_build_status": "BUILD_IN_PROGRESS",
        "cloudformation_stack_status": "CREATE_IN_PROGRESS",
        "cloudformation_stack_arn": STACK_DOCUMENT["cloudformationStackArn"],
        "region": "us-east-1",
        "version": "3.2.1",
        "cloudformation_stack_tags": [
            {"key": "parallelcluster:version", "value": "3.2.1"},
            {"key": "parallelcluster:image_name", "value": "custom-image-id"},
        ],
        "image_build_logs_arn": STACK_DOCUMENT["imageBuildLogsArn"],
        "cloudformation_stack_creation_time": datetime(2022, 3, 30, 23, 23, 33, 731000, tzinfo=UTC),
    }


def test_an_ami_document_has_snake_case_at_every_level_and_an_aware_creation_time() -> None:
    python = pythonic(AMI_DOCUMENT)
    assert python["ec2_ami_info"] == {
        "ami_name": "done 2022", "ami_id": "ami-0123", "state": "AVAILABLE",
        "tags": [{"key": "parallelcluster:image_id", "value": "done"}], "architecture": "x86_64",
    }  # fmt: skip
    assert python["creation_time"] == datetime(2022, 3, 31, 1, 2, 3, tzinfo=UTC)
    assert python["creation_time"].tzinfo is not None
    assert "description" not in python["ec2_ami_info"] and "cloudformation_stack_arn" not in python


def test_describe_is_ordered_as_pclusters_model_declares_it() -> None:
    ordered = pcluster_describe(dict(reversed(list(AMI_DOCUMENT.items()))))
    assert list(ordered) == [
        "imageConfiguration", "imageId", "creationTime", "imageBuildStatus", "region", "ec2AmiInfo", "version",
    ]  # fmt: skip
    assert list(ordered["ec2AmiInfo"]) == ["amiName", "amiId", "state", "tags", "architecture"]
    assert list(ordered["ec2AmiInfo"]["tags"][0]) == ["value", "key"]
    stack = pcluster_describe(STACK_DOCUMENT)
    assert list(stack) == [
        "imageConfiguration", "imageId", "imagebuilderImageStatus", "imageBuildStatus", "cloudformationStackStatus",
        "cloudformationStackArn", "region", "version", "cloudformationStackTags", "imageBuildLogsArn",
        "cloudformationStackCreationTime",
    ]  # fmt: skip
    assert [list(tag) for tag in stack["cloudformationStackTags"]] == [["value", "key"]] * 2
    assert stack == STACK_DOCUMENT  # the same document, only in another order


def test_list_is_ordered_as_pcluster_prints_it() -> None:
    page = {
        "nextToken": "t",
        "images": [{"version": "3.2.1", "region": "us-east-1", "ec2AmiInfo": {"amiId": "ami-1"},
                    "imageBuildStatus": "BUILD_COMPLETE", "imageId": "a"}],
    }  # fmt: skip
    ordered = pcluster_list(page)
    assert list(ordered) == ["images", "nextToken"]
    assert list(ordered["images"][0]) == ["imageId", "imageBuildStatus", "ec2AmiInfo", "region", "version"]
