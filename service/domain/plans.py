"""Pure: what one event means for the cache, given what is known about its image: apply, refresh, or nothing.

An event says *that* something changed and little else (no tags, names or reasons). When the cache
already holds the image and the event's news fits what is stored, the event becomes a change to
apply; when it cannot be placed (an image the cache has not seen, another stack or Image Builder
image than the stored one, news that contradicts newer state), the answer is one targeted refresh of
that image from AWS; news the cache already reflects, and events about things that are not images,
need nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from service.domain import events, records
from service.domain.models import (
    IMAGE_RESOURCE_LOGICAL_ID,
    TAG_IMAGE_ID,
    AmiInfo,
    AmiStatePatch,
    Change,
    ImagebuilderState,
    Observed,
    Source,
    StackStatusPatch,
    tag_value,
)

# Counted (in the consumer's event counters) when an event is about something that is not an image.
IGNORED_RESOURCE = "ignored_resources"
IGNORED_AMI = "ignored_amis"


@dataclass(frozen=True)
class Facts:
    """What the cache (and, for an AMI it does not know, EC2) says about an event's image, read at `observed_at`.

    - `image_id`: the cached image an Image Builder ARN or AMI id belongs to (None: no cached image has it).
      Stack and resource events name their image themselves (the stack name) and leave it None.
    - `parts`: that image's stored parts (None: the cache does not hold the image).
    - `ami`: for an AMI event the cache cannot place, EC2's DescribeImages answer for the AMI
      (None: not asked, or not there).
    """

    observed_at: datetime
    image_id: str | None = None
    parts: records.Parts | None = None
    ami: AmiInfo | None = None


@dataclass(frozen=True)
class Plan:
    """What one event means: a change to apply, and/or one image to look up because the event cannot say enough.

    `ignored` names the counter of an event that is not about an image (IGNORED_RESOURCE, IGNORED_AMI).
    `news`, with a refresh: what the event says that can wait for the image if the refresh gets no answer
    (service.domain.rechecks' news: merged as soon as the image is stored).
    """

    change: Change | None = None
    refresh: tuple[str, str] | None = None
    ignored: str | None = None
    news: Change | None = None


def is_image_resource(event: events.ResourceStatusEvent) -> bool:
    """Whether a resource event is about the stack's Image Builder image (the only resource this service reads)."""
    return event.logical_id == IMAGE_RESOURCE_LOGICAL_ID and bool(event.physical_id)


def worth_storing(refreshed: Change, stored: records.Parts | None) -> bool:
    """Whether a targeted refresh is stored: always for a cached image, else only when AWS shows an image.

    Stack events also come for clusters and other stacks: only images (an AMI, or a stack tagged with an
    image id) are cached.
    """
    if stored is not None:
        return True
    stack = refreshed.stack.value if refreshed.stack else None
    ami = refreshed.ami.value if refreshed.ami else None
    return ami is not None or (stack is not None and tag_value(stack.tags, TAG_IMAGE_ID) is not None)


def decide(event: events.Event, known: Facts) -> Plan:
    """The plan for `event`, given `known`. Pure: the same event and facts always give the same plan."""
    if isinstance(event, events.StackStatusEvent):
        return _stack_status(event, known)
    if isinstance(event, events.ResourceStatusEvent):
        return _resource_status(event, known)
    if isinstance(event, events.ImagebuilderStateEvent):
        return _imagebuilder_state(event, known)
    return _ami_state(event, known)


def _change(event: events.Event, known: Facts, *, image_id: str) -> Change:
    """A change from `event` that says nothing yet; the caller adds the one part the event speaks about."""
    return Change(
        region=event.envelope.region,
        image_id=image_id,
        source=Source.EVENT,
        observed_at=known.observed_at,
        happened_at=event.envelope.time,
    )


def _stack_status(event: events.StackStatusEvent, known: Facts) -> Plan:
    patch = Observed(event.envelope.time, StackStatusPatch(event.stack_id, event.status, event.status_reason))
    if known.parts is not None and records.patched_stack(known.parts, patch) is not None:
        return Plan(change=replace(_change(event, known, image_id=event.stack_name), stack_status=patch))
    stored = known.parts.stack_value if known.parts else None
    if stored is not None and stored.stack_id == event.stack_id and stored.status == event.status:
        return Plan()  # older or repeated news
    # Not cached, another stack of that name, or older news that disagrees: ask AWS.
    news = replace(_change(event, known, image_id=event.stack_name), stack_status=patch)
    return Plan(refresh=(event.envelope.region, event.stack_name), news=news)


def _resource_status(event: events.ResourceStatusEvent, known: Facts) -> Plan:
    if not is_image_resource(event):
        return Plan(ignored=IGNORED_RESOURCE)
    stored = known.parts.imagebuilder_value if known.parts else None
    if stored is not None and stored.arn == event.physical_id:
        return Plan()
    # A new Image Builder image behind the stack: its state comes from GetImage.
    return Plan(refresh=(event.envelope.region, event.stack_name))


def _imagebuilder_state(event: events.ImagebuilderStateEvent, known: Facts) -> Plan:
    region = event.envelope.region
    if known.image_id is None:
        # No cached image has this Image Builder image: the naming rule's guess is the image to look up.
        return Plan(refresh=(region, event.image_id_hint))
    incoming = Observed(event.envelope.time, ImagebuilderState(arn=event.arn, status=event.status, reason=event.reason))
    stored = known.parts.imagebuilder if known.parts else None
    if stored is not None and not records.is_newer(stored, incoming):
        # EventBridge times have whole seconds: a look-up earlier in that second can seem newer.
        # Same news: nothing to do; different news: ask AWS which is current.
        same = stored.value is not None and stored.value.status == event.status
        return Plan() if same else Plan(refresh=(region, known.image_id))
    return Plan(change=replace(_change(event, known, image_id=known.image_id), imagebuilder=incoming))


def _ami_state(event: events.AmiStateEvent, known: Facts) -> Plan:
    region = event.envelope.region
    patch = Observed(event.envelope.time, AmiStatePatch(event.ami_id, event.state))
    if known.image_id is not None:
        if known.parts is not None and records.patched_ami(known.parts, patch) is not None:
            return Plan(change=replace(_change(event, known, image_id=known.image_id), ami_state=patch))
        news = replace(_change(event, known, image_id=known.image_id), ami_state=patch)
        return Plan(refresh=(region, known.image_id), news=news)
    tagged = tag_value(known.ami.tags, TAG_IMAGE_ID) if known.ami else None
    if tagged is None:
        # Not a ParallelCluster image's AMI (or already gone).
        return Plan(ignored=IGNORED_AMI)
    return Plan(refresh=(region, tagged), news=replace(_change(event, known, image_id=tagged), ami_state=patch))
