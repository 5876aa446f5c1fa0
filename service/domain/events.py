"""Pure: an EventBridge envelope (as SQS delivers it) -> a typed event, "not ours", or a malformed-message error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from service.errors import MalformedEvent
from service.support.clock import as_utc

STACK_STATUS = "CloudFormation Stack Status Change"
RESOURCE_STATUS = "CloudFormation Resource Status Change"
IMAGEBUILDER_STATE = "EC2 Image Builder Image State Change"
AMI_STATE = "EC2 AMI State Change"

_STACK_ARN = re.compile(r"^arn:[\w-]+:cloudformation:([\w-]+):(\d+):stack/([^/]+)/.+$")
_IMAGEBUILDER_ARN = re.compile(r"^arn:[\w-]+:imagebuilder:([\w-]+):(\d+):image/([^/]+)/[^/]+/\d+$")
IMAGEBUILDER_NAME_PREFIX = "parallelclusterimage-"


@dataclass(frozen=True)
class Envelope:
    event_id: str
    detail_type: str
    source: str
    region: str
    account: str
    time: datetime


@dataclass(frozen=True)
class StackStatusEvent:
    envelope: Envelope
    stack_id: str
    stack_name: str
    status: str
    status_reason: str | None


@dataclass(frozen=True)
class ResourceStatusEvent:
    envelope: Envelope
    stack_id: str
    stack_name: str
    logical_id: str
    physical_id: str | None
    resource_type: str | None
    status: str | None


@dataclass(frozen=True)
class ImagebuilderStateEvent:
    envelope: Envelope
    arn: str
    status: str
    reason: str | None
    # The naming rule's guess (lower-cased image id); the stack resource's physical id is authoritative.
    image_id_hint: str


@dataclass(frozen=True)
class AmiStateEvent:
    envelope: Envelope
    ami_id: str
    state: str


@dataclass(frozen=True)
class NotOurs:
    """A well-formed event this service has no use for (counted and deleted)."""

    envelope: Envelope
    reason: str


Event = StackStatusEvent | ResourceStatusEvent | ImagebuilderStateEvent | AmiStateEvent


def stack_name_from_arn(stack_id: str) -> str:
    match = _STACK_ARN.match(stack_id)
    if not match:
        raise MalformedEvent(f"not a CloudFormation stack ARN: {stack_id!r}")
    return match.group(3)


def imagebuilder_image_id_hint(arn: str) -> str | None:
    """`arn:...:image/parallelclusterimage-x/1.0.0/1` -> "x" (lower-cased, as Image Builder names it)."""
    match = _IMAGEBUILDER_ARN.match(arn)
    if not match or not match.group(3).startswith(IMAGEBUILDER_NAME_PREFIX):
        return None
    return match.group(3)[len(IMAGEBUILDER_NAME_PREFIX) :]


def _text(container: dict[str, Any], key: str, *, where: str) -> str:
    value = container.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{where}{key} is missing or not a string")
    return value


def _optional_text(container: dict[str, Any], key: str) -> str | None:
    value = container.get(key)
    # CloudFormation sends "" for "no reason"; DescribeStacks then has no StackStatusReason at all.
    return value if isinstance(value, str) and value else None


def parse(body: str | bytes) -> Event | NotOurs:
    """Read one SQS message body. Raises MalformedEvent when it cannot be read."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise MalformedEvent("body is not a JSON object")
    detail = raw.get("detail")
    if not isinstance(detail, dict):
        raise MalformedEvent("detail is missing or not an object")
    time_text = _text(raw, "time", where="")
    try:
        when = as_utc(time_text)
    except ValueError as exc:
        raise MalformedEvent(f"time is not an ISO-8601 timestamp: {raw.get('time')!r}") from exc
    envelope = Envelope(
        event_id=_text(raw, "id", where=""),
        detail_type=_text(raw, "detail-type", where=""),
        source=_text(raw, "source", where=""),
        region=_text(raw, "region", where=""),
        account=str(raw.get("account", "")),
        time=when,
    )
    kind = envelope.detail_type
    if kind == STACK_STATUS:
        stack_id = _text(detail, "stack-id", where="detail.")
        status = detail.get("status-details")
        if not isinstance(status, dict):
            raise MalformedEvent("detail.status-details is missing")
        return StackStatusEvent(
            envelope=envelope,
            stack_id=stack_id,
            stack_name=stack_name_from_arn(stack_id),
            status=_text(status, "status", where="detail.status-details."),
            status_reason=_optional_text(status, "status-reason"),
        )
    if kind == RESOURCE_STATUS:
        stack_id = _text(detail, "stack-id", where="detail.")
        raw_status = detail.get("status-details")
        status = raw_status if isinstance(raw_status, dict) else {}
        return ResourceStatusEvent(
            envelope=envelope,
            stack_id=stack_id,
            stack_name=stack_name_from_arn(stack_id),
            logical_id=_text(detail, "logical-resource-id", where="detail."),
            physical_id=_optional_text(detail, "physical-resource-id"),
            resource_type=_optional_text(detail, "resource-type"),
            status=_optional_text(status, "status"),
        )
    if kind == IMAGEBUILDER_STATE:
        resources = raw.get("resources")
        if not isinstance(resources, list) or not resources or not isinstance(resources[0], str):
            raise MalformedEvent("resources[0] (the image ARN) is missing")
        state = detail.get("state")
        if not isinstance(state, dict):
            raise MalformedEvent("detail.state is missing")
        arn = resources[0]
        hint = imagebuilder_image_id_hint(arn)
        if hint is None:
            return NotOurs(envelope, "Image Builder image is not a ParallelCluster image")
        return ImagebuilderStateEvent(
            envelope=envelope,
            arn=arn,
            status=_text(state, "status", where="detail.state."),
            reason=_optional_text(state, "reason"),
            image_id_hint=hint,
        )
    if kind == AMI_STATE:
        return AmiStateEvent(
            envelope=envelope,
            ami_id=_text(detail, "ImageId", where="detail."),
            state=_text(detail, "State", where="detail."),
        )
    return NotOurs(envelope, f"detail-type {kind!r} is not one this service reads")
