"""Pure: the parts of an image -> the pcluster describe-image document, and its status fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.domain import status
from service.domain.models import (
    CONFIG_NAME,
    TAG_BUILD_LOG,
    TAG_S3_BUCKET,
    TAG_S3_IMAGE_DIR,
    TAG_VERSION,
    AmiInfo,
    ConfigLocation,
    ImagebuilderState,
    StackInfo,
    StatusFields,
    Tags,
    tag_value,
)
from service.support.clock import as_utc

NOT_AVAILABLE = "NOT_AVAILABLE"


def iso_time(value: datetime | str) -> str:
    """UTC, millisecond precision, `Z` suffix: pcluster's `to_iso_timestr`."""
    return as_utc(value).isoformat(timespec="milliseconds")[:-6] + "Z"


def _tags(tags: Tags) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in tags]


def _without_none(document: dict[str, Any]) -> dict[str, Any]:
    # pcluster's encoder drops None values (include_nulls = False); empty strings and lists stay.
    return {key: value for key, value in document.items() if value is not None}


def visible_stack(stack: StackInfo | None) -> StackInfo | None:
    """The stack as describe sees it: a deleted stack is not found by name."""
    if stack is None or not status.stack_is_described(stack.status):
        return None
    return stack


def render(
    *,
    region: str,
    image_id: str,
    stack: StackInfo | None,
    ami: AmiInfo | None,
    imagebuilder: ImagebuilderState | None,
) -> dict[str, Any] | None:
    """The describe document without `imageConfiguration` (signed at serve time); None means 404.

    The AMI path wins over the stack path, as in pcluster.
    """
    if ami is not None:
        return _without_none(
            {
                "imageId": image_id,
                "region": region,
                "imageBuildStatus": "BUILD_COMPLETE",
                "creationTime": iso_time(ami.creation_date) if ami.creation_date else None,
                "version": tag_value(ami.tags, TAG_VERSION),
                "ec2AmiInfo": _without_none(
                    {
                        "amiId": ami.ami_id,
                        "amiName": ami.name,
                        "architecture": ami.architecture,
                        "description": ami.description,
                        "state": ami.state.upper(),
                        "tags": _tags(ami.tags),
                    }
                ),
            }
        )
    shown = visible_stack(stack)
    if shown is None:
        return None
    state = imagebuilder or ImagebuilderState()
    return _without_none(
        {
            "imageId": image_id,
            "region": region,
            "imageBuildStatus": status.build_status(shown.status),
            "imageBuildLogsArn": tag_value(shown.tags, TAG_BUILD_LOG),
            "imagebuilderImageStatus": state.status,
            "imagebuilderImageStatusReason": state.reason if state.status is not None else None,
            "cloudformationStackStatus": shown.status,
            "cloudformationStackStatusReason": shown.status_reason,
            "cloudformationStackArn": shown.stack_id,
            "cloudformationStackCreationTime": iso_time(shown.creation_time),
            "cloudformationStackTags": _tags(shown.tags),
            "version": tag_value(shown.tags, TAG_VERSION),
        }
    )


def status_fields(
    *, stack: StackInfo | None, ami: AmiInfo | None, imagebuilder: ImagebuilderState | None
) -> StatusFields:
    """The statuses a transition records, from the same parts `render` uses."""
    shown = visible_stack(stack)
    exists = ami is not None or shown is not None
    build: str | None
    if ami is not None:
        build = "BUILD_COMPLETE"
    elif shown is not None:
        build = status.build_status(shown.status)
    else:
        build = None
    return StatusFields(
        exists=exists,
        image_build_status=build,
        stack_status=shown.status if shown else None,
        stack_status_reason=shown.status_reason if shown else None,
        imagebuilder_status=imagebuilder.status if imagebuilder and shown else None,
        imagebuilder_status_reason=imagebuilder.reason if imagebuilder and shown else None,
        ami_state=ami.state.upper() if ami else None,
    )


def config_source(*, stack: StackInfo | None, ami: AmiInfo | None) -> tuple[str | None, str | None]:
    """(bucket, object key) of the image configuration, read as pcluster does: AMI tags first, then stack tags."""
    bucket = None
    image_dir = None
    for tags in (ami.tags if ami else None, stack.tags if stack else None):
        if tags is None:
            continue
        bucket = bucket or tag_value(tags, TAG_S3_BUCKET)
        image_dir = image_dir or tag_value(tags, TAG_S3_IMAGE_DIR)
    key = f"{image_dir}/configs/{CONFIG_NAME}" if image_dir else None
    return bucket, key


def config_url(config: ConfigLocation, signed: str | None) -> str:
    return signed if config.signable and signed else NOT_AVAILABLE
