"""Pure: pcluster's ListImages: which images each `imageStatus` filter selects, and the summary of one image."""

from __future__ import annotations

from typing import Any

from service.domain.models import TAG_VERSION, tag_value
from service.domain.records import Parts
from service.domain.status import build_status

IMAGE_STATUS_FILTERS = ("AVAILABLE", "PENDING", "FAILED")
# AVAILABLE selects images with an AMI; the other two select by stack status, as pcluster does.
PENDING_STACK_STATUSES = ("CREATE_IN_PROGRESS",)
FAILED_STACK_STATUSES = (
    "CREATE_FAILED",
    "DELETE_FAILED",
    "ROLLBACK_FAILED",
    "ROLLBACK_COMPLETE",
    "ROLLBACK_IN_PROGRESS",
)


def item(
    *,
    image_id: str,
    image_status: str,
    region: str,
    version: str | None,
    ami_id: str | None = None,
    stack_status: str | None = None,
    stack_id: str | None = None,
) -> dict[str, Any]:
    """One entry of a ListImages page: the AMI's fields for AVAILABLE, else the stack's; absent values omitted."""
    if image_status == "AVAILABLE":
        entry: dict[str, Any] = {
            "imageId": image_id,
            "imageBuildStatus": "BUILD_COMPLETE",
            "ec2AmiInfo": {"amiId": ami_id} if ami_id is not None else None,
            "region": region,
            "version": version,
        }
    else:
        assert stack_status is not None
        entry = {
            "imageId": image_id,
            "imageBuildStatus": build_status(stack_status),
            "cloudformationStackStatus": stack_status,
            "cloudformationStackArn": stack_id,
            "region": region,
            "version": version,
        }
    return {key: value for key, value in entry.items() if value is not None}


def summary(*, image_id: str, parts: Parts, image_status: str, region: str) -> dict[str, Any]:
    """One entry of a ListImages page for an image as the cache holds it now."""
    if image_status == "AVAILABLE":
        ami = parts.ami_value
        assert ami is not None
        return item(
            image_id=image_id, image_status=image_status, region=region, version=tag_value(ami.tags, TAG_VERSION),
            ami_id=ami.ami_id,
        )
    stack = parts.stack_value
    assert stack is not None
    return item(
        image_id=image_id, image_status=image_status, region=region, version=tag_value(stack.tags, TAG_VERSION),
        stack_status=stack.status, stack_id=stack.stack_id,
    )
