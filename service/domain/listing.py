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


def summary(*, image_id: str, parts: Parts, image_status: str, region: str) -> dict[str, Any]:
    """One entry of a ListImages page: the AMI's for AVAILABLE, else the stack's; absent values omitted."""
    if image_status == "AVAILABLE":
        ami = parts.ami_value
        assert ami is not None
        item: dict[str, Any] = {
            "imageId": image_id,
            "imageBuildStatus": "BUILD_COMPLETE",
            "ec2AmiInfo": {"amiId": ami.ami_id},
            "region": region,
            "version": tag_value(ami.tags, TAG_VERSION),
        }
    else:
        stack = parts.stack_value
        assert stack is not None
        item = {
            "imageId": image_id,
            "imageBuildStatus": build_status(stack.status),
            "cloudformationStackStatus": stack.status,
            "cloudformationStackArn": stack.stack_id,
            "region": region,
            "version": tag_value(stack.tags, TAG_VERSION),
        }
    return {key: value for key, value in item.items() if value is not None}
