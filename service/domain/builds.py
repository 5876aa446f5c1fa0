"""Pure: one image's stored transitions -> its builds (start, end, outcome, version, failure reasons, phases).

A build is one run of an image from the moment its build status became BUILD_IN_PROGRESS to the moment
it left it: `complete` (the stack completed, or the AMI appeared), `failed` (the stack failed or began to
roll back), or `deleted` (the stack began deleting, or the image disappeared, first). A run the cache
never saw in progress (an AMI that was already there, a build first seen rolled back) is not a build
here: its start is unknown, and counting every AMI found on the first day as "built that day" would be
wrong. A build not yet ended is `in_progress`.

Times are AWS's (a transition's `happened_at`), not the order the cache learned things in. A
transition row is the whole status snapshot written when one part of the image (its stack, its
Image Builder image, its AMI) changed, and rows are learned out of time order when events arrive late
or reordered. So the rows are first split into one timeline per part (each row contributes the parts
that differ from the row before it), and the timelines are then replayed together in time order,
recomputing the build status from the parts as they stood at each moment. A part's timeline keeps the
order the cache learned it in (the cache never applies an older observation of a part over a newer
one); a time that would run backwards within a part is held at the one before and the edge is marked
inexact.

An edge (the start or end) is exact when it carries the time of an EventBridge event. Observed by
reconciliation or a live lookup, it carries the observation's time: the change happened at or before
it, after the observation before it (`after`), and (while the service reconciles) within one
reconcile interval of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain import status

COMPLETE = "complete"
FAILED = "failed"
DELETED = "deleted"
IN_PROGRESS = "in_progress"
OUTCOMES = (COMPLETE, FAILED, DELETED, IN_PROGRESS)
# Not a build state: the image has neither a visible stack nor an AMI.
_GONE = "gone"
EVENT_SOURCE = "event"

_STATE_BY_BUILD_STATUS = {
    "BUILD_IN_PROGRESS": IN_PROGRESS,
    "BUILD_COMPLETE": COMPLETE,
    "BUILD_FAILED": FAILED,
    "DELETE_IN_PROGRESS": DELETED,
    "DELETE_FAILED": DELETED,
    "DELETE_COMPLETE": DELETED,
}


@dataclass(frozen=True)
class Transition:
    """One stored transition row, as the derivation reads it (see service.store.tables.transitions)."""

    id: int
    happened_at: datetime
    observed_at: datetime
    source: str
    exists: bool = True
    stack_status: str | None = None
    stack_status_reason: str | None = None
    imagebuilder_status: str | None = None
    imagebuilder_status_reason: str | None = None
    ami_state: str | None = None
    pcluster_version: str | None = None


@dataclass(frozen=True)
class Edge:
    """When a build started or ended: AWS's time (`exact`), or an observation's, then after `after`."""

    at: datetime
    source: str
    exact: bool
    # When not exact: the observation before this one, so the change happened in (after, at]. None: unknown.
    after: datetime | None = None


@dataclass(frozen=True)
class Build:
    start: Edge
    end: Edge | None
    outcome: str
    version: str | None = None
    # pcluster's two reasons, as describe-image showed them when the build failed (failed builds only).
    stack_status_reason: str | None = None
    imagebuilder_status_reason: str | None = None
    # Seconds in each Image Builder status while the build ran, in the order first entered.
    phases: tuple[tuple[str, float], ...] = ()

    @property
    def duration_seconds(self) -> float | None:
        return (self.end.at - self.start.at).total_seconds() if self.end is not None else None


def build_state(*, stack_status: str | None, ami_state: str | None) -> str | None:
    """What the parts say of a build: an AMI is a finished build; else the visible stack's status decides.

    None when the stack's status is one pcluster does not map (nothing to conclude from it).
    """
    if ami_state is not None:
        return COMPLETE
    if stack_status is None:
        return _GONE
    mapped = status.build_status(stack_status)
    return _STATE_BY_BUILD_STATUS.get(mapped) if mapped is not None else None


# --- the per-part timelines ---------------------------------------------------------------------------

_STACK, _IMAGEBUILDER, _AMI, _VERSION = "stack", "imagebuilder", "ami", "version"
_PARTS = (_STACK, _IMAGEBUILDER, _AMI, _VERSION)


def _part_values(row: Transition) -> dict[str, Any]:
    return {
        _STACK: (row.stack_status, row.stack_status_reason),
        _IMAGEBUILDER: (row.imagebuilder_status, row.imagebuilder_status_reason),
        _AMI: row.ami_state,
        _VERSION: row.pcluster_version,
    }


@dataclass(frozen=True)
class _Change:
    """One part taking a value, at a time, learned from one row."""

    at: datetime
    row: int  # the row's position in learned order: ties in time keep that order
    part: str
    value: Any
    source: str
    exact: bool
    after: datetime | None


def _changes(rows: Sequence[Transition]) -> list[_Change]:
    """Every part change the rows record, in time order (ties: learned order, then part)."""
    changes: list[_Change] = []
    previous: dict[str, Any] = {_STACK: (None, None), _IMAGEBUILDER: (None, None), _AMI: None, _VERSION: None}
    last_at: dict[str, datetime] = {}
    last_observed: datetime | None = None
    for position, row in enumerate(rows):
        values = _part_values(row)
        for part in _PARTS:
            if values[part] == previous[part]:
                continue
            at = row.happened_at
            held = part in last_at and at < last_at[part]
            if held:
                at = last_at[part]
            last_at[part] = at
            after = min(last_observed, at) if last_observed is not None else None
            changes.append(
                _Change(
                    at=at, row=position, part=part, value=values[part], source=row.source,
                    exact=row.source == EVENT_SOURCE and not held, after=after,
                )
            )
        previous = values
        last_observed = row.observed_at if last_observed is None else max(last_observed, row.observed_at)
    order = {part: index for index, part in enumerate(_PARTS)}
    changes.sort(key=lambda change: (change.at, change.row, order[change.part]))
    return changes


# --- the replay -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StateEdge:
    state: str
    edge: Edge
    index: int  # position in the replayed changes


def _replay(changes: list[_Change]) -> list[_StateEdge]:
    """The build state after each moment (all changes of one row at one time applied together), where it moves."""
    current: dict[str, Any] = {_STACK: (None, None), _AMI: None}
    state: str | None = None
    edges: list[_StateEdge] = []
    index = 0
    while index < len(changes):
        group_end = index
        while (
            group_end < len(changes)
            and changes[group_end].at == changes[index].at
            and changes[group_end].row == changes[index].row
        ):
            current[changes[group_end].part] = changes[group_end].value
            group_end += 1
        now = build_state(stack_status=current[_STACK][0], ami_state=current[_AMI])
        if now is not None and now != state:
            # The edge is as exact as the least exact change that moved it.
            group = changes[index:group_end]
            moving = [change for change in group if change.part in (_STACK, _AMI)] or group
            first = moving[0]
            edges.append(
                _StateEdge(
                    now,
                    Edge(
                        at=first.at, source=first.source, exact=all(change.exact for change in moving),
                        after=None if all(change.exact for change in moving) else first.after,
                    ),
                    index,
                )
            )
            state = now
        index = group_end
    return edges


def derive(rows: Sequence[Transition]) -> list[Build]:
    """The builds `rows` (one image's transitions, in the order the cache learned them) record, oldest first."""
    changes = _changes(rows)
    spans: list[tuple[_StateEdge, _StateEdge | None]] = []
    started: _StateEdge | None = None
    for edge in _replay(changes):
        if started is None and edge.state == IN_PROGRESS:
            started = edge
        elif started is not None and edge.state != IN_PROGRESS:
            spans.append((started, edge))
            started = None
    if started is not None:
        spans.append((started, None))
    builds: list[Build] = []
    for number, (start, end) in enumerate(spans):
        # What belongs to this build: its own changes, and the ones after its end until the next build starts
        # (Image Builder's final reason can arrive after the stack has already rolled back).
        following = spans[number + 1][0].index if number + 1 < len(spans) else len(changes)
        outcome = IN_PROGRESS if end is None else end.state if end.state in (COMPLETE, FAILED) else DELETED
        # A build still running is measured up to the last thing known about it.
        until = end.edge.at if end is not None else changes[following - 1].at
        reasons = _failure_reasons(changes[start.index : following]) if outcome == FAILED else (None, None)
        builds.append(
            Build(
                start=start.edge,
                end=end.edge if end is not None else None,
                outcome=outcome,
                version=_version(changes[:following]),
                stack_status_reason=reasons[0],
                imagebuilder_status_reason=reasons[1],
                phases=_phases(changes, start=start.edge.at, until=until),
            )
        )
    return builds


def _version(changes: Sequence[_Change]) -> str | None:
    """The ParallelCluster version the image carried by the build's last change (tags name it; an
    image may lose them when its stack goes, so the latest known one stands)."""
    version: str | None = None
    for change in changes:
        if change.part == _VERSION and change.value is not None:
            version = change.value
    return version


def _failure_reasons(changes: Sequence[_Change]) -> tuple[str | None, str | None]:
    """The stack's reason when it failed, and Image Builder's last reason, as pcluster's describe showed them."""
    stack_reason: str | None = None
    imagebuilder_reason: str | None = None
    for change in changes:
        if change.part == _STACK:
            stack_status, reason = change.value
            if reason and stack_status is not None and status.build_status(stack_status) == "BUILD_FAILED":
                stack_reason = reason
        elif change.part == _IMAGEBUILDER:
            _, reason = change.value
            if reason:
                imagebuilder_reason = reason
    return stack_reason, imagebuilder_reason


def _phases(changes: Sequence[_Change], *, start: datetime, until: datetime) -> tuple[tuple[str, float], ...]:
    """Seconds in each Image Builder status within [start, until], in the order the statuses were entered.

    A status entered within the build counts even for zero seconds (EventBridge times have whole seconds).
    """
    segments: list[tuple[str | None, datetime]] = []
    for change in changes:
        if change.part == _IMAGEBUILDER and (not segments or change.value[0] != segments[-1][0]):
            segments.append((change.value[0], change.at))
    spent: dict[str, float] = {}
    for position, (name, began) in enumerate(segments):
        ended = segments[position + 1][1] if position + 1 < len(segments) else until
        if name is None or began > until or ended < start or (ended == start and began < start):
            continue
        seconds = (min(ended, until) - max(began, start)).total_seconds()
        spent[name] = spent.get(name, 0.0) + max(seconds, 0.0)
    return tuple(spent.items())


# --- failure reasons, grouped ------------------------------------------------------------------------------

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_AWS_ID = re.compile(r"\b(?:ami|i|sg|subnet|vpc|snap|vol|eni|lt)-[0-9a-f]{8,17}\b")
_ACCOUNT = re.compile(r"(?<=:)\d{12}(?=:)")
_TIME = re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?\b")
_LONG_HEX = re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,}\b")
FAILURE_KEY_MAX = 500


def failure_reason(build: Build) -> str | None:
    """The one reason a failed build is counted under: Image Builder's (it says what broke), else the stack's."""
    return build.imagebuilder_status_reason or build.stack_status_reason


def failure_key(reason: str, *, image_id: str) -> str:
    """`reason` with what differs between occurrences of the same failure replaced, so equal failures group.

    Ids (UUIDs, workflow and SSM executions, AWS resource ids), account numbers, timestamps and the image's
    own name become placeholders.
    """
    key = _TIME.sub("<time>", reason)
    key = _UUID.sub("<id>", key)
    key = _AWS_ID.sub("<id>", key)
    key = _ACCOUNT.sub("<account>", key)
    key = _LONG_HEX.sub("<id>", key)
    for name in sorted({image_id, image_id.lower()}, key=len, reverse=True):
        key = key.replace(name, "<image>")
    return " ".join(key.split())[:FAILURE_KEY_MAX]
