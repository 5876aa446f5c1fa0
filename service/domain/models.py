"""Plain data the service passes around: AWS observations, changes, and stored records."""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

# pcluster's pattern, as its OpenAPI document writes it (and as error messages quote it). Use it with
# fullmatch: with match, `$` also matches before a final newline, so "abc\n" would pass.
IMAGE_ID_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]+$")
# CloudFormation stack names are at most 128 characters and the image id is the stack name.
IMAGE_ID_MAX_LENGTH = 128
# ASCII digits only (`\d` would take any Unicode digit); used with fullmatch like IMAGE_ID_PATTERN.
REGION_PATTERN = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")

TAG_IMAGE_ID = "parallelcluster:image_id"
TAG_VERSION = "parallelcluster:version"
TAG_BUILD_STATUS = "parallelcluster:build_status"
TAG_BUILD_LOG = "parallelcluster:build_log"
TAG_S3_BUCKET = "parallelcluster:s3_bucket"
TAG_S3_IMAGE_DIR = "parallelcluster:s3_image_dir"
IMAGE_RESOURCE_LOGICAL_ID = "ParallelClusterImage"
CONFIG_NAME = "image-config.yaml"

# The parts of an image an observation reads, as Change.unknown names them.
PART_STACK = "stack"
PART_AMI = "ami"
PART_IMAGEBUILDER = "imagebuilder"
PART_CONFIG = "config"


class Source(enum.StrEnum):
    """Where an observation came from."""

    RECONCILE = "reconcile"
    LIVE = "live"
    EVENT = "event"


Tags = tuple[tuple[str, str], ...]
T = TypeVar("T")


def tag_value(tags: Tags, key: str) -> str | None:
    for tag_key, value in tags:
        if tag_key == key:
            return value
    return None


@dataclass(frozen=True)
class StackInfo:
    """What DescribeStacks says about one stack."""

    name: str
    stack_id: str
    status: str
    creation_time: datetime
    tags: Tags = ()
    status_reason: str | None = None


@dataclass(frozen=True)
class AmiInfo:
    """What DescribeImages says about one AMI."""

    ami_id: str
    state: str
    tags: Tags = ()
    name: str | None = None
    description: str | None = None
    architecture: str | None = None
    # Kept as AWS sends it (an ISO string); rendering normalises it.
    creation_date: str | None = None


@dataclass(frozen=True)
class ImagebuilderState:
    """The Image Builder image behind the stack's ParallelClusterImage resource.

    `status` None means the resource or GetImage could not be read: describe then omits both fields.
    """

    arn: str | None = None
    status: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ConfigLocation:
    """Where the image configuration lives; `available` is whether pcluster could reach the bucket."""

    bucket: str | None = None
    key: str | None = None
    available: bool = False

    @functools.cached_property
    def signable(self) -> bool:
        """Worked out once per location: the describe fast path reads it per answer."""
        return self.available and self.bucket is not None and self.key is not None


@dataclass(frozen=True)
class Observed(Generic[T]):
    """One source's view of one part of an image at `as_of`; `value` None means "observed absent"."""

    as_of: datetime
    value: T | None


@dataclass(frozen=True)
class StackStatusPatch:
    """A stack status event: the status of one stack, nothing else about it."""

    stack_id: str
    status: str
    status_reason: str | None = None


@dataclass(frozen=True)
class AmiStatePatch:
    """An AMI state event: the state of one AMI, nothing else about it."""

    ami_id: str
    state: str


@dataclass(frozen=True)
class Change:
    """Everything one observation says about one image. Parts left as None are not spoken about."""

    region: str
    image_id: str
    source: Source
    observed_at: datetime
    stack: Observed[StackInfo] | None = None
    ami: Observed[AmiInfo] | None = None
    imagebuilder: Observed[ImagebuilderState] | None = None
    config: Observed[ConfigLocation] | None = None
    # Events carry only a status; they patch the stored part when it is the same stack / AMI.
    stack_status: Observed[StackStatusPatch] | None = None
    ami_state: Observed[AmiStatePatch] | None = None
    # When the change happened (an event's time); defaults to observed_at.
    happened_at: datetime | None = None
    # Parts (PART_*) this observation asked AWS about and got no answer for (throttled, 5xx, timeout,
    # reset): not knowing, which unlike an observed absence is never stored as a fact. The stored part
    # stays, and a recheck of the image is owed (service.domain.rechecks).
    unknown: frozenset[str] = frozenset()
    # A whole observation: every part pcluster would read for this image now, not an event's patch. One
    # with nothing unknown settles the image's recheck, if one is owed.
    whole: bool = False


@dataclass(frozen=True)
class StatusFields:
    """The statuses whose changes make a transition."""

    exists: bool
    image_build_status: str | None = None
    stack_status: str | None = None
    stack_status_reason: str | None = None
    imagebuilder_status: str | None = None
    imagebuilder_status_reason: str | None = None
    ami_state: str | None = None


@dataclass(frozen=True)
class CachedImage:
    """A stored record as served: the materialized document plus what serving needs."""

    region: str
    image_id: str
    version: int
    exists: bool
    document: bytes | None
    config: ConfigLocation
    changed_at: datetime
    confirmed_at: datetime
    # A recheck of the image is owed: a part could not be confirmed at the last look, or a targeted refresh
    # an event asked for failed. The record is the last known truth, not a confirmed one.
    recheck_owed: bool = False

    @functools.cached_property
    def confirmed_epoch(self) -> float:
        """`confirmed_at` in Unix seconds, worked out once per record: the describe fast path reads it per answer."""
        return self.confirmed_at.timestamp()
