"""AWS calls -> Changes: pcluster's call sequence for one image, and the pieces reconciliation shares."""

from __future__ import annotations

import logging

from service.aws import Aws, default_bucket_name
from service.domain import describe
from service.domain.models import (
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


async def imagebuilder_for_stack(aws: Aws, *, region: str, stack_name: str) -> ImagebuilderState | None:
    """The Image Builder state behind the stack, as pcluster reads it; None when AWS could not say.

    A missing resource or image is an answer (both fields absent), not an error; throttling and
    outages are not an answer, so the caller keeps what it knew.
    """
    try:
        arn = await aws.image_resource_arn(region=region, stack_name=stack_name)
        if arn is None:
            return ImagebuilderState()
        return await aws.imagebuilder_state(region=region, arn=arn)
    except AwsError as exc:
        log.warning("image builder state of %s/%s unknown: %s", region, stack_name, exc.message)
        return None


async def resolve_bucket(aws: Aws, *, region: str, bucket: str | None) -> str:
    """The bucket pcluster would use: the tagged one, else the account's default ParallelCluster bucket."""
    if bucket:
        return bucket
    return default_bucket_name(account_id=await aws.account_id(region=region), region=region)


async def config_location(
    aws: Aws, *, region: str, stack: StackInfo | None, ami: AmiInfo | None, reachable: dict[str, bool] | None = None
) -> ConfigLocation | None:
    """Where the image configuration is and whether its bucket answers; None when AWS could not say.

    `reachable` memoizes HeadBucket per bucket within one reconciliation pass.
    """
    tagged_bucket, key = describe.config_source(stack=stack, ami=ami)
    if key is None:
        return ConfigLocation(bucket=tagged_bucket)
    try:
        bucket = await resolve_bucket(aws, region=region, bucket=tagged_bucket)
        if reachable is not None and bucket in reachable:
            available = reachable[bucket]
        else:
            available = await aws.bucket_available(region=region, bucket=bucket)
            if reachable is not None:
                reachable[bucket] = available
    except AwsError as exc:
        log.warning("configuration bucket for %s unknown: %s", region, exc.message)
        return None
    return ConfigLocation(bucket=bucket, key=key, available=available)


async def observe_live(aws: Aws, *, region: str, image_id: str) -> Change:
    """What pcluster's describe-image would see now: AMI path first, then the stack path.

    Raises AwsError when EC2 or CloudFormation cannot answer (no answer is better than a wrong 404).
    """
    now = utcnow()
    ami = await aws.find_available_ami(region=region, image_id=image_id)
    stack: StackInfo | None = None
    stack_observed = False
    imagebuilder: ImagebuilderState | None = None
    if ami is None or None in describe.config_source(stack=None, ami=ami):
        # The stack path; pcluster also reads the stack for the config location when the AMI lacks its tags.
        try:
            stack = await aws.describe_stack(region=region, name=image_id)
            stack_observed = True
        except AwsError:
            if ami is None:
                raise
        if ami is None and stack is not None:
            imagebuilder = await imagebuilder_for_stack(aws, region=region, stack_name=stack.name)
    config = None
    if ami is not None or stack is not None:
        config = await config_location(aws, region=region, stack=stack, ami=ami)
    return Change(
        region=region,
        image_id=image_id,
        source=Source.LIVE,
        observed_at=now,
        ami=Observed(now, ami),
        stack=Observed(now, stack) if stack_observed else None,
        imagebuilder=Observed(now, imagebuilder) if imagebuilder is not None else None,
        config=Observed(now, config) if config is not None else None,
    )
