"""AWS calls -> Changes: pcluster's call sequence for one image, and the pieces reconciliation shares.

Every AWS failure here is one of two things, and which one decides what may be stored:
- an answer (`AwsNotFound`, access denied, a rejected parameter): the resource is not there, or pcluster
  could not read it either. That is what describe says (fields absent, `NOT_AVAILABLE`), stored as fact;
- no answer (`service.aws.is_unknown`: throttled, 5xx, timeout, connection trouble): not knowing. The
  part is left out of the change and named in `Change.unknown`, so the stored value stays, the request
  is answered as pcluster would answer it now, and a recheck is owed (service.domain.rechecks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from datetime import datetime
from typing import TypeVar

from service.aws import Aws, default_bucket_name, is_unknown
from service.domain import describe
from service.domain.models import (
    PART_CONFIG,
    PART_IMAGEBUILDER,
    PART_STACK,
    AmiInfo,
    Change,
    ConfigLocation,
    ImagebuilderState,
    Observed,
    Source,
    StackInfo,
)
from service.errors import AwsError
from service.support.clock import utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")


async def imagebuilder_for_stack(aws: Aws, *, region: str, stack_name: str) -> ImagebuilderState | None:
    """The Image Builder state behind the stack, as pcluster reads it; None when AWS gave no answer.

    A missing resource or image, or any answer pcluster cannot read, is "both fields absent" (pcluster's
    answer), not an error; throttling and outages are not an answer, so the caller keeps what it knew.
    """
    try:
        arn = await aws.image_resource_arn(region=region, stack_name=stack_name)
        if arn is None:
            return ImagebuilderState()
        return await aws.imagebuilder_state(region=region, arn=arn)
    except AwsError as exc:
        if not is_unknown(exc):
            return ImagebuilderState()
        log.warning("image builder state of %s/%s unknown: %s", region, stack_name, exc.message)
        return None


async def resolve_bucket(aws: Aws, *, region: str, bucket: str | None) -> str:
    """The bucket pcluster would use: the tagged one, else the account's default ParallelCluster bucket."""
    if bucket:
        return bucket
    return default_bucket_name(account_id=await aws.account_id(region=region), region=region)


async def config_location(
    aws: Aws,
    *,
    region: str,
    stack: StackInfo | None,
    ami: AmiInfo | None,
    reachable: dict[str, bool | None] | None = None,
) -> ConfigLocation | None:
    """Where the image configuration is and whether its bucket answers; None when AWS gave no answer.

    `reachable` memoizes HeadBucket per bucket within one reconciliation pass (None: no answer, so a
    bucket that fails is asked once per pass, not once per image).
    """
    tagged_bucket, key = describe.config_source(stack=stack, ami=ami)
    if key is None:
        return ConfigLocation(bucket=tagged_bucket)
    bucket = tagged_bucket
    try:
        bucket = await resolve_bucket(aws, region=region, bucket=tagged_bucket)
        if reachable is not None and bucket in reachable:
            available = reachable[bucket]
        else:
            available = await aws.bucket_available(region=region, bucket=bucket)
            if reachable is not None:
                reachable[bucket] = available
    except AwsError as exc:
        if not is_unknown(exc):
            # An answer pcluster cannot sign for either: NOT_AVAILABLE, as it says.
            return ConfigLocation(bucket=bucket, key=key)
        log.warning("configuration bucket for %s unknown: %s", region, exc.message)
        if reachable is not None and bucket is not None:
            reachable[bucket] = None
        return None
    if available is None:
        return None
    return ConfigLocation(bucket=bucket, key=key, available=available)


def observation(
    *,
    region: str,
    image_id: str,
    source: Source,
    at: datetime,
    ami: AmiInfo | None,
    stack: StackInfo | None,
    stack_observed: bool = True,
    imagebuilder: ImagebuilderState | None = None,
    config: ConfigLocation | None = None,
    unknown: Iterable[str] = (),
) -> Change:
    """A whole observation of one image made at `at`: its AMI and (when looked at) its stack as found, absence
    included; its Image Builder state and configuration where known (None: not looked at, or no answer)."""
    return Change(
        region=region,
        image_id=image_id,
        source=source,
        observed_at=at,
        ami=Observed(at, ami),
        stack=Observed(at, stack) if stack_observed else None,
        imagebuilder=Observed(at, imagebuilder) if imagebuilder is not None else None,
        config=Observed(at, config) if config is not None else None,
        unknown=frozenset(unknown),
        whole=True,
    )


async def _by(deadline: float | None, awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, or AwsError(code="Timeout") when `deadline` (event loop time) passes first."""
    if deadline is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    except TimeoutError as exc:
        raise AwsError("AWS did not answer in time", code="Timeout") from exc


async def _part_by(deadline: float | None, awaitable: Awaitable[T | None]) -> T | None:
    """A part's reading, or None (not known) when `deadline` passes first: a slow part costs only itself."""
    try:
        return await _by(deadline, awaitable)
    except AwsError:
        log.warning("a part was not read in time")
        return None


async def observe_live(aws: Aws, *, region: str, image_id: str, deadline: float | None = None) -> Change:
    """What pcluster's describe-image would see now: AMI path first, then the stack path.

    A whole observation: parts AWS gave no answer for, or not by `deadline` (event loop time), are named in
    `unknown`. Raises AwsError when EC2 or CloudFormation cannot say, or not in time, whether the image
    exists (no answer is better than a wrong 404).
    """
    now = utcnow()
    unknown: set[str] = set()
    ami = await _by(deadline, aws.find_available_ami(region=region, image_id=image_id))
    stack: StackInfo | None = None
    stack_observed = False
    imagebuilder: ImagebuilderState | None = None
    if ami is None or None in describe.config_source(stack=None, ami=ami):
        # The stack path; pcluster also reads the stack for the config location when the AMI lacks its tags.
        try:
            stack = await _by(deadline, aws.describe_stack(region=region, name=image_id))
            stack_observed = True
        except AwsError as exc:
            if ami is None:
                raise
            if is_unknown(exc):
                # The configuration's location may be in the stack's tags: not knowing the stack, not that either.
                unknown |= {PART_STACK, PART_CONFIG}
        if ami is None and stack is not None:
            imagebuilder = await _part_by(deadline, imagebuilder_for_stack(aws, region=region, stack_name=stack.name))
            if imagebuilder is None:
                unknown.add(PART_IMAGEBUILDER)
    config = None
    if (ami is not None or stack is not None) and PART_CONFIG not in unknown:
        config = await _part_by(deadline, config_location(aws, region=region, stack=stack, ami=ami))
        if config is None:
            unknown.add(PART_CONFIG)
    return observation(
        region=region, image_id=image_id, source=Source.LIVE, at=now, ami=ami, stack=stack,
        stack_observed=stack_observed, imagebuilder=imagebuilder, config=config, unknown=unknown,
    )
