"""Pure: the API's JSON as the seed's Python example shows it, and as the `pcluster` CLI prints it.

Python: snake_case keys at every level (pcluster's own `to_snake_case`), tag entries keeping
`key`/`value`, and timestamps as timezone-aware `datetime`s. CLI: the API's camelCase document with
its keys in the order pcluster's models declare them, which is the order `pcluster` prints.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

# The fields that are timestamps, in the snake_case names the Python shape gives them.
TIMESTAMP_KEYS = frozenset({
    "creation_time", "cloudformation_stack_creation_time", "time", "observed_time",
    # builds, their summary, and the retention horizon of every fleet-history answer
    "start_time", "end_time", "start_not_before", "end_not_before", "since", "until", "horizon",
    # ParallelCluster's image log operations: stack and log events, log streams
    "timestamp", "first_event_timestamp", "last_event_timestamp", "last_ingestion_time",
})
# Objects whose keys are data (a build's phases are Image Builder statuses), kept as the API spells them.
DATA_KEYED = frozenset({"phases"})


def to_snake_case(name: str) -> str:
    """pcluster.utils.to_snake_case: ec2AmiInfo -> ec2_ami_info, imageBuildLogsArn -> image_build_logs_arn."""
    first = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name).replace("-", "_")
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", first).lower()


def parse_time(text: str) -> datetime:
    """`2022-03-30T23:23:33.731Z` as an aware datetime (UTC)."""
    return datetime.fromisoformat(text)


def pythonic(value: Any) -> Any:
    """The API's JSON in the seed's Python shape."""
    if isinstance(value, list):
        return [pythonic(item) for item in value]
    if not isinstance(value, dict):
        return value
    converted: dict[str, Any] = {}
    for key, item in value.items():
        name = to_snake_case(key)
        if name in DATA_KEYED and isinstance(item, dict):
            converted[name] = dict(item)
        elif name in TIMESTAMP_KEYS and isinstance(item, str):
            converted[name] = parse_time(item)
        else:
            converted[name] = pythonic(item)
    return converted


# pcluster's model classes declare their attributes in this order, and its CLI prints them so
# (pcluster/api/models/*.py, openapi_types): Tag is value before key.
TAG_ORDER = ("value", "key")
EC2_AMI_INFO_ORDER = ("amiName", "amiId", "description", "state", "tags", "architecture")
DESCRIBE_ORDER = (
    "imageConfiguration",
    "imageId",
    "imagebuilderImageStatus",
    "imagebuilderImageStatusReason",
    "creationTime",
    "imageBuildStatus",
    "cloudformationStackStatus",
    "cloudformationStackStatusReason",
    "cloudformationStackArn",
    "region",
    "ec2AmiInfo",
    "version",
    "cloudformationStackTags",
    "imageBuildLogsArn",
    "cloudformationStackCreationTime",
)
LIST_ORDER = ("images", "nextToken")
IMAGE_SUMMARY_ORDER = (
    "imageId",
    "imageBuildStatus",
    "cloudformationStackStatus",
    "cloudformationStackArn",
    "ec2AmiInfo",
    "region",
    "version",
)


def _ordered(document: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    known = {key: document[key] for key in order if key in document}
    # Anything pcluster has no model field for (none today) keeps its place after the known ones.
    return known | {key: value for key, value in document.items() if key not in known}


def _tags(tags: Any) -> Any:
    return [_ordered(tag, TAG_ORDER) for tag in tags] if isinstance(tags, list) else tags


def pcluster_describe(document: dict[str, Any]) -> dict[str, Any]:
    """A describe document with its keys (and its tags' and AMI info's) in the order `pcluster` prints."""
    ordered = _ordered(document, DESCRIBE_ORDER)
    if "cloudformationStackTags" in ordered:
        ordered["cloudformationStackTags"] = _tags(ordered["cloudformationStackTags"])
    ami = ordered.get("ec2AmiInfo")
    if isinstance(ami, dict):
        ami = _ordered(ami, EC2_AMI_INFO_ORDER)
        if "tags" in ami:
            # Assigning an existing key keeps its place.
            ami["tags"] = _tags(ami["tags"])
        ordered["ec2AmiInfo"] = ami
    return ordered


def pcluster_list(page: dict[str, Any]) -> dict[str, Any]:
    """A ListImages page in the order `pcluster list-images` prints."""
    ordered = _ordered(page, LIST_ORDER)
    if isinstance(ordered.get("images"), list):
        ordered["images"] = [_ordered(image, IMAGE_SUMMARY_ORDER) for image in ordered["images"]]
    return ordered
