"""Pure: what the cache knows about one image (its parts), the one rule for "newer", and the JSON form.

An image is four parts, each last reported by some source at some time (`as_of`):
the stack, the AMI, the Image Builder image and the configuration's location. A change
replaces a part only when it is at least as new as what is stored; that is the only
definition of "newer" in the service (`is_newer`): merging, event patches and the consumer's
decisions all ask it.

A part AWS could not answer for (`Change.unknown`) is not spoken about: the stored value stays, as
the last known truth, unless it describes something the rest of the change says is no longer there
(`kept_unknown`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from service.domain import describe
from service.domain.models import (
    PART_CONFIG,
    PART_IMAGEBUILDER,
    AmiInfo,
    AmiStatePatch,
    Change,
    ConfigLocation,
    ImagebuilderState,
    Observed,
    StackInfo,
    StackStatusPatch,
    StatusFields,
)
from service.support.clock import as_utc


@dataclass(frozen=True)
class Parts:
    stack: Observed[StackInfo] | None = None
    ami: Observed[AmiInfo] | None = None
    imagebuilder: Observed[ImagebuilderState] | None = None
    config: Observed[ConfigLocation] | None = None

    @property
    def stack_value(self) -> StackInfo | None:
        return self.stack.value if self.stack else None

    @property
    def ami_value(self) -> AmiInfo | None:
        return self.ami.value if self.ami else None

    @property
    def imagebuilder_value(self) -> ImagebuilderState | None:
        return self.imagebuilder.value if self.imagebuilder else None

    @property
    def config_value(self) -> ConfigLocation:
        value = self.config.value if self.config else None
        return value or ConfigLocation()


def is_newer(stored: Observed[Any] | None, incoming: Observed[Any] | None) -> bool:
    """Whether `incoming` may replace `stored`: it exists and is not older. Ties go to the incoming one."""
    if incoming is None:
        return False
    return stored is None or incoming.as_of >= stored.as_of


# AMI states in which DescribeImages no longer lists the AMI (pcluster's AMI path then misses it).
AMI_STATES_NOT_LISTED = frozenset({"deregistered", "disabled"})


def patched_stack(current: Parts, patch: Observed[StackStatusPatch] | None) -> Observed[StackInfo] | None:
    """The stored stack with the event's status applied, or None when the patch does not apply.

    It applies to the same stack (by id) only, and only when not older than what is stored.
    """
    stored = current.stack
    if patch is None or patch.value is None or stored is None or stored.value is None:
        return None
    if stored.value.stack_id != patch.value.stack_id or not is_newer(stored, patch):
        return None
    return Observed(
        patch.as_of, replace(stored.value, status=patch.value.status, status_reason=patch.value.status_reason)
    )


def patched_ami(current: Parts, patch: Observed[AmiStatePatch] | None) -> Observed[AmiInfo] | None:
    """The stored AMI with the event's state applied (absent once deregistered), or None when it does not apply."""
    stored = current.ami
    if patch is None or patch.value is None or stored is None or stored.value is None:
        return None
    if stored.value.ami_id != patch.value.ami_id or not is_newer(stored, patch):
        return None
    if patch.value.state.lower() in AMI_STATES_NOT_LISTED:
        return Observed(patch.as_of, None)
    return Observed(patch.as_of, replace(stored.value, state=patch.value.state.lower()))


def merge(current: Parts, change: Change) -> Parts:
    """The parts after applying `change`; parts the change is silent on, or older than stored, stay."""
    merged = current
    stack_patch = patched_stack(current, change.stack_status)
    if stack_patch is not None:
        merged = replace(merged, stack=stack_patch)
    ami_patch = patched_ami(current, change.ami_state)
    if ami_patch is not None:
        merged = replace(merged, ami=ami_patch)
    if is_newer(current.stack, change.stack):
        merged = replace(merged, stack=change.stack)
    if is_newer(current.ami, change.ami):
        merged = replace(merged, ami=change.ami)
    if is_newer(current.imagebuilder, change.imagebuilder):
        merged = replace(merged, imagebuilder=change.imagebuilder)
    if is_newer(current.config, change.config):
        merged = replace(merged, config=change.config)
    return kept_unknown(current, merged, change.unknown)


def kept_unknown(current: Parts, merged: Parts, unknown: frozenset[str]) -> Parts:
    """`merged` without the last known values of unknown parts that no longer apply.

    - An Image Builder state belongs to the stack it was read for: when the stack was replaced (another
      stack id), the old state says nothing about the new build, so it goes (describe omits the fields).
    - A configuration location belongs to the tags it was derived from: when the tags now point at
      another object, the old location (and its signed URL) would be wrong, so it goes (NOT_AVAILABLE).
    """
    if PART_IMAGEBUILDER in unknown and merged.imagebuilder is not None:
        before = current.stack_value.stack_id if current.stack_value else None
        after = merged.stack_value.stack_id if merged.stack_value else None
        if before != after:
            merged = replace(merged, imagebuilder=None)
    if PART_CONFIG in unknown and merged.config is not None and merged.config.value is not None:
        tagged_bucket, key = describe.config_source(stack=merged.stack_value, ami=merged.ami_value)
        kept = merged.config.value
        if kept.key != key or (tagged_bucket is not None and kept.bucket != tagged_bucket):
            merged = replace(merged, config=None)
    return merged


@dataclass(frozen=True)
class Rendered:
    """What the parts mean to a client: the document bytes (None = 404) and the status fields."""

    document: bytes | None
    fields: StatusFields
    config: ConfigLocation


def render(*, region: str, image_id: str, parts: Parts) -> Rendered:
    document = describe.render(
        region=region,
        image_id=image_id,
        stack=parts.stack_value,
        ami=parts.ami_value,
        imagebuilder=parts.imagebuilder_value,
    )
    fields = describe.status_fields(
        stack=parts.stack_value, ami=parts.ami_value, imagebuilder=parts.imagebuilder_value
    )
    return Rendered(
        document=orjson.dumps(document, option=orjson.OPT_SORT_KEYS) if document is not None else None,
        fields=fields,
        config=parts.config_value if document is not None else ConfigLocation(),
    )


# --- JSON form of the parts, for the images table --------------------------------------------------


def _time(value: datetime) -> str:
    return as_utc(value).isoformat()


def encode_stack(stack: StackInfo | None) -> dict[str, Any] | None:
    if stack is None:
        return None
    return {
        "name": stack.name,
        "stackId": stack.stack_id,
        "status": stack.status,
        "statusReason": stack.status_reason,
        "creationTime": _time(stack.creation_time),
        "tags": [list(tag) for tag in stack.tags],
    }


def decode_stack(raw: dict[str, Any] | None) -> StackInfo | None:
    if raw is None:
        return None
    return StackInfo(
        name=raw["name"],
        stack_id=raw["stackId"],
        status=raw["status"],
        status_reason=raw.get("statusReason"),
        creation_time=as_utc(raw["creationTime"]),
        tags=tuple((key, value) for key, value in raw.get("tags") or ()),
    )


def encode_ami(ami: AmiInfo | None) -> dict[str, Any] | None:
    if ami is None:
        return None
    return {
        "amiId": ami.ami_id,
        "state": ami.state,
        "name": ami.name,
        "description": ami.description,
        "architecture": ami.architecture,
        "creationDate": ami.creation_date,
        "tags": [list(tag) for tag in ami.tags],
    }


def decode_ami(raw: dict[str, Any] | None) -> AmiInfo | None:
    if raw is None:
        return None
    return AmiInfo(
        ami_id=raw["amiId"],
        state=raw["state"],
        name=raw.get("name"),
        description=raw.get("description"),
        architecture=raw.get("architecture"),
        creation_date=raw.get("creationDate"),
        tags=tuple((key, value) for key, value in raw.get("tags") or ()),
    )


def encode_imagebuilder(state: ImagebuilderState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {"arn": state.arn, "status": state.status, "reason": state.reason}


def decode_imagebuilder(raw: dict[str, Any] | None) -> ImagebuilderState | None:
    if raw is None:
        return None
    return ImagebuilderState(arn=raw.get("arn"), status=raw.get("status"), reason=raw.get("reason"))


def encode_config(config: ConfigLocation | None) -> dict[str, Any] | None:
    if config is None:
        return None
    return {"bucket": config.bucket, "key": config.key, "available": config.available}


def decode_config(raw: dict[str, Any] | None) -> ConfigLocation | None:
    if raw is None:
        return None
    return ConfigLocation(bucket=raw.get("bucket"), key=raw.get("key"), available=bool(raw.get("available")))


def encode_parts(parts: Parts) -> str:
    """All four parts with their as_of times, as one JSON text."""

    def observed(item: Observed[Any] | None, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if item is None:
            return None
        return {"asOf": _time(item.as_of), "value": value}

    return orjson.dumps(
        {
            "stack": observed(parts.stack, encode_stack(parts.stack_value)),
            "ami": observed(parts.ami, encode_ami(parts.ami_value)),
            "imagebuilder": observed(parts.imagebuilder, encode_imagebuilder(parts.imagebuilder_value)),
            "config": observed(parts.config, encode_config(parts.config.value if parts.config else None)),
        }
    ).decode()


def decode_parts(text: str | None) -> Parts:
    if not text:
        return Parts()
    raw = orjson.loads(text)

    def as_of(item: dict[str, Any]) -> datetime:
        return as_utc(item["asOf"])

    stack = raw.get("stack")
    ami = raw.get("ami")
    imagebuilder = raw.get("imagebuilder")
    config = raw.get("config")
    return Parts(
        stack=Observed(as_of(stack), decode_stack(stack["value"])) if stack else None,
        ami=Observed(as_of(ami), decode_ami(ami["value"])) if ami else None,
        imagebuilder=(
            Observed(as_of(imagebuilder), decode_imagebuilder(imagebuilder["value"])) if imagebuilder else None
        ),
        config=Observed(as_of(config), decode_config(config["value"])) if config else None,
    )
