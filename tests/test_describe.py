"""The describe-image document built from an image's parts, as `pcluster describe-image` shapes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from service.domain import describe
from service.domain.models import AmiInfo, ConfigLocation, ImagebuilderState, StackInfo, StatusFields, Tags

REGION = "eu-west-1"
IMAGE_ID = "alinux2-image"
STACK_ID = f"arn:aws:cloudformation:{REGION}:123456789012:stack/{IMAGE_ID}/5f1a2b3c-0000-4000-8000-000000000001"
IMAGEBUILDER_ARN = f"arn:aws:imagebuilder:{REGION}:123456789012:image/parallelclusterimage-{IMAGE_ID}/3.9.0/1"
BUILD_LOG_ARN = f"arn:aws:logs:{REGION}:123456789012:log-group:/aws/imagebuilder/ParallelClusterImage-{IMAGE_ID}"
STACK_TAGS: Tags = (
    ("parallelcluster:image_id", IMAGE_ID),
    ("parallelcluster:version", "3.9.0"),
    ("parallelcluster:build_log", BUILD_LOG_ARN),
    ("parallelcluster:s3_bucket", "stack-bucket"),
    ("parallelcluster:s3_image_dir", "parallelcluster/3.9.0/images/alinux2-image-abc"),
)
AMI_TAGS: Tags = (
    ("parallelcluster:image_id", IMAGE_ID),
    ("parallelcluster:version", "3.8.0"),
    ("parallelcluster:build_status", "available"),
    ("parallelcluster:s3_bucket", "ami-bucket"),
    ("parallelcluster:s3_image_dir", "parallelcluster/3.8.0/images/alinux2-image-def"),
)
ROLLBACK_REASON = "The following resource(s) failed to create: [ParallelClusterImage]."
CREATED = datetime(2022, 3, 30, 23, 23, 33, 731000, tzinfo=UTC)
CLOUDFORMATION_KEYS = {
    "cloudformationStackStatus",
    "cloudformationStackStatusReason",
    "cloudformationStackArn",
    "cloudformationStackCreationTime",
    "cloudformationStackTags",
}


def make_stack(status: str = "CREATE_IN_PROGRESS", *, reason: str | None = None, tags: Tags = STACK_TAGS) -> StackInfo:
    return StackInfo(
        name=IMAGE_ID, stack_id=STACK_ID, status=status, creation_time=CREATED, tags=tags, status_reason=reason
    )


def make_ami(
    *,
    state: str = "available",
    description: str | None = "AWS ParallelCluster AMI for alinux2",
    tags: Tags = AMI_TAGS,
    creation_date: str | None = "2022-03-31T01:02:03.000Z",
) -> AmiInfo:
    return AmiInfo(
        ami_id="ami-0123456789abcdef0",
        state=state,
        tags=tags,
        name="alinux2-image 2022-03-31T01-02-03.000Z",
        description=description,
        architecture="x86_64",
        creation_date=creation_date,
    )


def render(
    *,
    stack: StackInfo | None = None,
    ami: AmiInfo | None = None,
    imagebuilder: ImagebuilderState | None = None,
) -> dict[str, Any] | None:
    return describe.render(region=REGION, image_id=IMAGE_ID, stack=stack, ami=ami, imagebuilder=imagebuilder)


def nulls(value: Any, path: str = "$") -> list[str]:
    """Paths of every None inside a JSON-like value."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in nulls(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in nulls(item, f"{path}[{index}]")]
    return []


# --- iso_time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(CREATED, "2022-03-30T23:23:33.731Z", id="aware-utc"),
        pytest.param(datetime(2022, 3, 30, 23, 23, 33), "2022-03-30T23:23:33.000Z", id="naive-is-utc"),
        pytest.param(
            datetime(2022, 3, 30, 23, 23, 33, 731999, tzinfo=UTC), "2022-03-30T23:23:33.731Z", id="micros-truncated"
        ),
        pytest.param(
            datetime(2022, 3, 31, 1, 23, 33, 731000, tzinfo=timezone(timedelta(hours=2))),
            "2022-03-30T23:23:33.731Z",
            id="aware-plus-two",
        ),
        pytest.param(
            datetime(2022, 3, 30, 20, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2022-03-31T01:00:00.000Z",
            id="aware-minus-five-crosses-midnight",
        ),
        pytest.param("2022-03-30T23:23:33.000Z", "2022-03-30T23:23:33.000Z", id="string-millis-z"),
        pytest.param("2022-03-30T23:23:33Z", "2022-03-30T23:23:33.000Z", id="string-z"),
        pytest.param("2022-03-30T23:23:33.731Z", "2022-03-30T23:23:33.731Z", id="string-millis"),
        pytest.param("2022-03-30T23:23:33.731456Z", "2022-03-30T23:23:33.731Z", id="string-micros"),
        pytest.param("2022-03-30T23:23:33+00:00", "2022-03-30T23:23:33.000Z", id="string-plus-zero"),
        pytest.param("2022-03-31T01:23:33.731+02:00", "2022-03-30T23:23:33.731Z", id="string-plus-two"),
        pytest.param("2022-03-30T18:23:33-05:00", "2022-03-30T23:23:33.000Z", id="string-minus-five"),
        pytest.param("2022-03-31T05:53:33+0630", "2022-03-30T23:23:33.000Z", id="string-compact-offset"),
        pytest.param("2022-03-30T23:23:33", "2022-03-30T23:23:33.000Z", id="string-naive-is-utc"),
    ],
)
def test_iso_time_is_utc_with_milliseconds_and_z(value: datetime | str, expected: str) -> None:
    assert describe.iso_time(value) == expected


# --- render: AMI path -------------------------------------------------------------------------

AMI_DOCUMENT = {
    "imageId": IMAGE_ID,
    "region": REGION,
    "imageBuildStatus": "BUILD_COMPLETE",
    "creationTime": "2022-03-31T01:02:03.000Z",
    "version": "3.8.0",
    "ec2AmiInfo": {
        "amiId": "ami-0123456789abcdef0",
        "amiName": "alinux2-image 2022-03-31T01-02-03.000Z",
        "architecture": "x86_64",
        "description": "AWS ParallelCluster AMI for alinux2",
        "state": "AVAILABLE",
        "tags": [{"key": key, "value": value} for key, value in AMI_TAGS],
    },
}


@pytest.mark.parametrize(
    ("stack", "imagebuilder"),
    [
        pytest.param(None, None, id="no-stack"),
        pytest.param(make_stack("CREATE_IN_PROGRESS"), ImagebuilderState(IMAGEBUILDER_ARN, "BUILDING"), id="building"),
        pytest.param(make_stack("CREATE_COMPLETE"), ImagebuilderState(IMAGEBUILDER_ARN, "AVAILABLE"), id="complete"),
        pytest.param(make_stack("ROLLBACK_COMPLETE", reason="boom"), None, id="rolled-back"),
        pytest.param(make_stack("DELETE_FAILED", reason="bucket not empty"), None, id="delete-failed"),
        pytest.param(make_stack("DELETE_COMPLETE"), None, id="deleted"),
    ],
)
def test_ami_path_wins_over_stack_path(stack: StackInfo | None, imagebuilder: ImagebuilderState | None) -> None:
    assert render(stack=stack, ami=make_ami(), imagebuilder=imagebuilder) == AMI_DOCUMENT


def test_ami_document_has_no_cloudformation_or_imagebuilder_fields() -> None:
    document = render(
        stack=make_stack("DELETE_FAILED", reason="x"),
        ami=make_ami(),
        imagebuilder=ImagebuilderState(IMAGEBUILDER_ARN, "AVAILABLE", "done"),
    )

    assert document is not None
    assert not CLOUDFORMATION_KEYS & document.keys()
    assert not {"imagebuilderImageStatus", "imagebuilderImageStatusReason", "imageBuildLogsArn"} & document.keys()


@pytest.mark.parametrize(("state", "shown"), [("available", "AVAILABLE"), ("pending", "PENDING"), ("Failed", "FAILED")])
def test_ami_state_is_upper_cased(state: str, shown: str) -> None:
    document = render(ami=make_ami(state=state))

    assert document is not None
    assert document["ec2AmiInfo"]["state"] == shown


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        pytest.param((), [], id="none"),
        pytest.param((("a", "1"),), [{"key": "a", "value": "1"}], id="one"),
        pytest.param(
            (("b", ""), ("a", "2")), [{"key": "b", "value": ""}, {"key": "a", "value": "2"}], id="order-and-empty"
        ),
    ],
)
def test_ami_tags_are_key_value_objects_in_order(tags: Tags, expected: list[dict[str, str]]) -> None:
    document = render(ami=make_ami(tags=tags))

    assert document is not None
    assert document["ec2AmiInfo"]["tags"] == expected


def test_ami_description_is_omitted_when_none() -> None:
    document = render(ami=make_ami(description=None))

    assert document is not None
    assert "description" not in document["ec2AmiInfo"]
    assert nulls(document) == []


def test_ami_document_without_version_tag_or_creation_date_omits_them() -> None:
    document = render(ami=make_ami(tags=(), creation_date=None))

    assert document is not None
    assert "version" not in document
    assert "creationTime" not in document
    assert nulls(document) == []


# --- render: stack path -----------------------------------------------------------------------


def test_stack_document_has_every_design_field() -> None:
    document = render(
        stack=make_stack("ROLLBACK_COMPLETE", reason=ROLLBACK_REASON),
        imagebuilder=ImagebuilderState(IMAGEBUILDER_ARN, "FAILED", "Image build failed"),
    )

    assert document == {
        "imageId": IMAGE_ID,
        "region": REGION,
        "imageBuildStatus": "BUILD_FAILED",
        "imageBuildLogsArn": BUILD_LOG_ARN,
        "imagebuilderImageStatus": "FAILED",
        "imagebuilderImageStatusReason": "Image build failed",
        "cloudformationStackStatus": "ROLLBACK_COMPLETE",
        "cloudformationStackStatusReason": ROLLBACK_REASON,
        "cloudformationStackArn": STACK_ID,
        "cloudformationStackCreationTime": "2022-03-30T23:23:33.731Z",
        "cloudformationStackTags": [{"key": key, "value": value} for key, value in STACK_TAGS],
        "version": "3.9.0",
    }


@pytest.mark.parametrize(
    ("stack_status", "build_status"),
    [
        ("CREATE_IN_PROGRESS", "BUILD_IN_PROGRESS"),
        ("CREATE_COMPLETE", "BUILD_COMPLETE"),
        ("CREATE_FAILED", "BUILD_FAILED"),
        ("ROLLBACK_IN_PROGRESS", "BUILD_FAILED"),
        ("DELETE_IN_PROGRESS", "DELETE_IN_PROGRESS"),
        ("DELETE_FAILED", "DELETE_FAILED"),
    ],
)
def test_stack_document_build_status_follows_stack_status(stack_status: str, build_status: str) -> None:
    document = render(stack=make_stack(stack_status))

    assert document is not None
    assert document["imageBuildStatus"] == build_status
    assert document["cloudformationStackStatus"] == stack_status


@pytest.mark.parametrize(
    ("stack", "imagebuilder"),
    [
        pytest.param(make_stack(reason=None, tags=()), None, id="bare"),
        pytest.param(make_stack(reason=None), ImagebuilderState(IMAGEBUILDER_ARN, "BUILDING", None), id="no-reasons"),
        pytest.param(make_stack(reason=None), ImagebuilderState(IMAGEBUILDER_ARN, None, "ignored"), id="ib-unknown"),
        pytest.param(make_stack(reason=None), ImagebuilderState(), id="ib-empty"),
    ],
)
def test_stack_document_omits_none_values(stack: StackInfo, imagebuilder: ImagebuilderState | None) -> None:
    document = render(stack=stack, imagebuilder=imagebuilder)

    assert document is not None
    assert nulls(document) == []
    assert "cloudformationStackStatusReason" not in document


def test_stack_document_keeps_empty_strings_and_empty_tag_lists() -> None:
    document = render(stack=make_stack(reason="", tags=()), imagebuilder=ImagebuilderState(IMAGEBUILDER_ARN, "", ""))

    assert document is not None
    assert document["cloudformationStackStatusReason"] == ""
    assert document["cloudformationStackTags"] == []
    assert document["imagebuilderImageStatus"] == ""
    assert document["imagebuilderImageStatusReason"] == ""
    assert "version" not in document
    assert "imageBuildLogsArn" not in document


@pytest.mark.parametrize(
    "imagebuilder",
    [
        pytest.param(None, id="not-read"),
        pytest.param(ImagebuilderState(), id="empty"),
        pytest.param(ImagebuilderState(arn=IMAGEBUILDER_ARN), id="arn-only"),
        pytest.param(ImagebuilderState(arn=IMAGEBUILDER_ARN, reason="stale reason"), id="reason-without-status"),
    ],
)
def test_unknown_imagebuilder_status_leaves_out_both_imagebuilder_fields(
    imagebuilder: ImagebuilderState | None,
) -> None:
    document = render(stack=make_stack(), imagebuilder=imagebuilder)

    assert document is not None
    assert "imagebuilderImageStatus" not in document
    assert "imagebuilderImageStatusReason" not in document


@pytest.mark.parametrize(
    ("imagebuilder", "expected"),
    [
        pytest.param(
            ImagebuilderState(IMAGEBUILDER_ARN, "BUILDING"), {"imagebuilderImageStatus": "BUILDING"}, id="no-reason"
        ),
        pytest.param(
            ImagebuilderState(IMAGEBUILDER_ARN, "FAILED", "timeout"),
            {"imagebuilderImageStatus": "FAILED", "imagebuilderImageStatusReason": "timeout"},
            id="with-reason",
        ),
    ],
)
def test_imagebuilder_reason_is_omitted_when_none(imagebuilder: ImagebuilderState, expected: dict[str, str]) -> None:
    document = render(stack=make_stack(), imagebuilder=imagebuilder)

    assert document is not None
    assert {key: value for key, value in document.items() if key.startswith("imagebuilder")} == expected


@pytest.mark.parametrize(
    ("stack", "imagebuilder"),
    [
        pytest.param(None, None, id="nothing"),
        pytest.param(None, ImagebuilderState(IMAGEBUILDER_ARN, "AVAILABLE"), id="imagebuilder-only"),
        pytest.param(make_stack("DELETE_COMPLETE"), None, id="deleted-stack"),
        pytest.param(make_stack("DELETE_COMPLETE"), ImagebuilderState(IMAGEBUILDER_ARN, "DELETED"), id="deleted-both"),
    ],
)
def test_deleted_or_missing_stack_without_ami_renders_as_not_found(
    stack: StackInfo | None, imagebuilder: ImagebuilderState | None
) -> None:
    assert render(stack=stack, imagebuilder=imagebuilder) is None


# --- status_fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack", "ami", "imagebuilder", "expected"),
    [
        pytest.param(None, None, None, StatusFields(exists=False), id="nothing"),
        pytest.param(
            None,
            None,
            ImagebuilderState(IMAGEBUILDER_ARN, "AVAILABLE"),
            StatusFields(exists=False),
            id="imagebuilder-without-stack",
        ),
        pytest.param(
            make_stack("DELETE_COMPLETE", reason="gone"),
            None,
            ImagebuilderState(IMAGEBUILDER_ARN, "DELETED"),
            StatusFields(exists=False),
            id="deleted-stack",
        ),
        pytest.param(
            None,
            make_ami(state="available"),
            None,
            StatusFields(exists=True, image_build_status="BUILD_COMPLETE", ami_state="AVAILABLE"),
            id="ami-only",
        ),
        pytest.param(
            None,
            make_ami(),
            ImagebuilderState(IMAGEBUILDER_ARN, "AVAILABLE"),
            StatusFields(exists=True, image_build_status="BUILD_COMPLETE", ami_state="AVAILABLE"),
            id="ami-ignores-imagebuilder-without-stack",
        ),
        pytest.param(
            make_stack("DELETE_FAILED", reason="bucket not empty"),
            make_ami(),
            ImagebuilderState(IMAGEBUILDER_ARN, "AVAILABLE", None),
            StatusFields(
                exists=True,
                image_build_status="BUILD_COMPLETE",
                stack_status="DELETE_FAILED",
                stack_status_reason="bucket not empty",
                imagebuilder_status="AVAILABLE",
                ami_state="AVAILABLE",
            ),
            id="ami-wins-over-delete-failed-stack",
        ),
        pytest.param(
            make_stack("CREATE_IN_PROGRESS"),
            None,
            ImagebuilderState(IMAGEBUILDER_ARN, "BUILDING"),
            StatusFields(
                exists=True,
                image_build_status="BUILD_IN_PROGRESS",
                stack_status="CREATE_IN_PROGRESS",
                imagebuilder_status="BUILDING",
            ),
            id="building",
        ),
        pytest.param(
            make_stack("ROLLBACK_COMPLETE", reason="failed"),
            None,
            ImagebuilderState(IMAGEBUILDER_ARN, "FAILED", "timeout"),
            StatusFields(
                exists=True,
                image_build_status="BUILD_FAILED",
                stack_status="ROLLBACK_COMPLETE",
                stack_status_reason="failed",
                imagebuilder_status="FAILED",
                imagebuilder_status_reason="timeout",
            ),
            id="failed",
        ),
        pytest.param(
            make_stack("CREATE_COMPLETE"),
            None,
            None,
            StatusFields(exists=True, image_build_status="BUILD_COMPLETE", stack_status="CREATE_COMPLETE"),
            id="stack-without-imagebuilder",
        ),
    ],
)
def test_status_fields_follow_the_same_parts_as_render(
    stack: StackInfo | None, ami: AmiInfo | None, imagebuilder: ImagebuilderState | None, expected: StatusFields
) -> None:
    fields = describe.status_fields(stack=stack, ami=ami, imagebuilder=imagebuilder)

    assert fields == expected
    assert fields.exists is (render(stack=stack, ami=ami, imagebuilder=imagebuilder) is not None)


# --- config_source ----------------------------------------------------------------------------

AMI_KEY = "parallelcluster/3.8.0/images/alinux2-image-def/configs/image-config.yaml"
STACK_KEY = "parallelcluster/3.9.0/images/alinux2-image-abc/configs/image-config.yaml"


@pytest.mark.parametrize(
    ("stack", "ami", "expected"),
    [
        pytest.param(None, None, (None, None), id="nothing"),
        pytest.param(make_stack(), make_ami(), ("ami-bucket", AMI_KEY), id="ami-tags-first"),
        pytest.param(None, make_ami(), ("ami-bucket", AMI_KEY), id="ami-only"),
        pytest.param(make_stack(), None, ("stack-bucket", STACK_KEY), id="stack-only"),
        pytest.param(make_stack(), make_ami(tags=()), ("stack-bucket", STACK_KEY), id="untagged-ami-falls-to-stack"),
        pytest.param(
            make_stack("DELETE_COMPLETE"), None, ("stack-bucket", STACK_KEY), id="deleted-stack-still-has-tags"
        ),
        pytest.param(
            make_stack(tags=(("parallelcluster:s3_bucket", "b"),)), None, ("b", None), id="missing-dir-no-key"
        ),
        pytest.param(
            make_stack(tags=(("parallelcluster:s3_image_dir", "d"),)),
            None,
            (None, "d/configs/image-config.yaml"),
            id="missing-bucket",
        ),
        pytest.param(
            make_stack(tags=(("parallelcluster:s3_bucket", "b"), ("parallelcluster:s3_image_dir", ""))),
            None,
            ("b", None),
            id="empty-dir-no-key",
        ),
        pytest.param(make_stack(tags=()), make_ami(tags=()), (None, None), id="no-tags"),
    ],
)
def test_config_source_reads_ami_tags_then_stack_tags(
    stack: StackInfo | None, ami: AmiInfo | None, expected: tuple[str | None, str | None]
) -> None:
    assert describe.config_source(stack=stack, ami=ami) == expected


@pytest.mark.parametrize(
    ("config", "signed", "expected"),
    [
        pytest.param(ConfigLocation("b", "k", available=True), "https://signed", "https://signed", id="signed"),
        pytest.param(ConfigLocation("b", "k", available=True), None, "NOT_AVAILABLE", id="not-signed"),
        pytest.param(ConfigLocation("b", "k", available=False), "https://signed", "NOT_AVAILABLE", id="unreachable"),
        pytest.param(ConfigLocation(None, "k", available=True), "https://signed", "NOT_AVAILABLE", id="no-bucket"),
        pytest.param(ConfigLocation(), None, "NOT_AVAILABLE", id="unknown"),
    ],
)
def test_config_url_is_not_available_unless_signable_and_signed(
    config: ConfigLocation, signed: str | None, expected: str
) -> None:
    assert describe.config_url(config, signed) == expected
