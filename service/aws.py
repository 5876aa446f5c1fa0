"""The only module that talks to AWS: aiobotocore clients, plain-data results, errors mapped to service.errors."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiobotocore.session
import botocore.exceptions
from aiobotocore.config import AioConfig

from service.domain.models import (
    IMAGE_RESOURCE_LOGICAL_ID,
    TAG_BUILD_STATUS,
    TAG_IMAGE_ID,
    AmiInfo,
    ImagebuilderState,
    StackInfo,
    Tags,
)
from service.errors import AwsAccessDenied, AwsError, AwsNotFound, AwsThrottled, AwsUnavailable
from service.freshness import Freshness
from service.metrics import CALL_ERROR, CALL_NOT_FOUND, CALL_OK, CALL_THROTTLED, Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
        "EC2ThrottledException",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        # Image Builder's throttle, which botocore's retry handlers do not recognise.
        "CallRateLimitExceededException",
    }
)
ACCESS_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
     "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "AuthFailure", "SignatureDoesNotMatch"}
)
NOT_FOUND_CODES = frozenset(
    {"404", "NoSuchBucket", "NotFound", "ResourceNotFoundException", "NoSuchKey", "ParameterNotFound"}
)

# Image Builder throttles with an error botocore will not retry: we retry it ourselves, boundedly.
IMAGEBUILDER_THROTTLE = "CallRateLimitExceededException"
IMAGEBUILDER_RETRIES = 4
IMAGEBUILDER_BACKOFF_SECONDS = 0.2


def translate(exc: BaseException, *, operation: str) -> AwsError:
    """The most specific service error for a botocore/aiohttp failure."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or str(exc)
        http_status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in THROTTLE_CODES or http_status == 429:
            return AwsThrottled(message, code=code, operation=operation)
        if code in ACCESS_CODES or http_status == 403:
            return AwsAccessDenied(message, code=code, operation=operation)
        if code in NOT_FOUND_CODES or (code == "ValidationError" and "does not exist" in message):
            return AwsNotFound(message, code=code, operation=operation)
        if http_status >= 500:
            return AwsUnavailable(message, code=code, operation=operation)
        return AwsError(message, code=code, operation=operation)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AwsAccessDenied(str(exc), code="NoCredentials", operation=operation)
    return AwsUnavailable(str(exc) or type(exc).__name__, operation=operation)


def is_unknown(error: AwsError) -> bool:
    """Whether an error means AWS gave no answer (throttled, 5xx, timeout, connection trouble), so whatever
    was asked is not known, as opposed to an answer: "not found", "access denied", a rejected request."""
    return isinstance(error, AwsThrottled | AwsUnavailable) or error.code == "Timeout"


def _tags(raw: list[dict[str, str]] | None) -> Tags:
    return tuple((tag["Key"], tag["Value"]) for tag in raw or ())


def stack_from_api(raw: dict[str, Any]) -> StackInfo:
    return StackInfo(
        name=raw["StackName"],
        stack_id=raw["StackId"],
        status=raw["StackStatus"],
        status_reason=raw.get("StackStatusReason"),
        creation_time=raw["CreationTime"],
        tags=_tags(raw.get("Tags")),
    )


def ami_from_api(raw: dict[str, Any]) -> AmiInfo:
    return AmiInfo(
        ami_id=raw["ImageId"],
        state=raw.get("State", ""),
        tags=_tags(raw.get("Tags")),
        name=raw.get("Name"),
        description=raw.get("Description"),
        architecture=raw.get("Architecture"),
        creation_date=raw.get("CreationDate"),
    )


@dataclass(frozen=True)
class QueueMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int


def queue_region(queue_url: str, *, default: str) -> str:
    """The region in an SQS queue URL (sqs.R.amazonaws.com, R.queue.amazonaws.com, VPC endpoints); else `default`."""
    host = urlsplit(queue_url).hostname or ""
    for pattern in (r"(?:^|\.)sqs[.-]([a-z]{2}(?:-[a-z]+)+-\d)\.", r"^([a-z]{2}(?:-[a-z]+)+-\d)\.queue\."):
        match = re.search(pattern, host)
        if match:
            return match.group(1)
    return default


def default_bucket_name(*, account_id: str, region: str) -> str:
    """ParallelCluster's default bucket, used when an image carries no parallelcluster:s3_bucket tag."""
    digest = hashlib.sha256((account_id + region).encode()).hexdigest()[:16]
    return f"parallelcluster-{digest}-v1-do-not-delete"


def client_config(*, read_timeout: float = 30.0) -> AioConfig:
    return AioConfig(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=50,
    )


# The AWS calls the work in hand has made, while something counts them (`calls_made`): a live lookup counts its own,
# whatever else runs at the same time.
_CALLS_MADE: ContextVar[list[int] | None] = ContextVar("statuscache_aws_calls_made", default=None)


@contextmanager
def calls_made() -> Iterator[list[int]]:
    """Counts the AWS calls made inside the block (and in tasks it starts): `tally[0]` after it."""
    tally = [0]
    token = _CALLS_MADE.set(tally)
    try:
        yield tally
    finally:
        _CALLS_MADE.reset(token)


class Aws:
    """One aiobotocore session and its clients per (service, region), created once and closed on `close`.

    Endpoints, credentials and profiles come from botocore's own configuration (AWS_ENDPOINT_URL,
    AWS_ENDPOINT_URL_<SERVICE>, AWS_PROFILE, ...): nothing here overrides them. Every call is counted
    in `calls` (by operation) and in `metrics.aws_calls` (by operation and outcome); whether AWS answers, by
    region, goes to `freshness`.
    """

    def __init__(self, *, metrics: Metrics | None = None, freshness: Freshness | None = None) -> None:
        self._session = aiobotocore.session.get_session()
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._account_ids: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.metrics = metrics if metrics is not None else Metrics()
        self.freshness = freshness if freshness is not None else Freshness()

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()

    async def client(self, service: str, region: str) -> Any:
        key = (service, region)
        existing = self._clients.get(key)
        if existing is not None:
            return existing
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._clients:
                read_timeout = 30.0 if service == "sqs" else 20.0
                creator = self._session.create_client(
                    service, region_name=region, config=client_config(read_timeout=read_timeout)
                )
                self._clients[key] = await self._stack.enter_async_context(creator)
        return self._clients[key]

    async def _call(self, service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        client = await self.client(service, region)
        name = f"{service}.{operation}"
        self.calls[name] += 1
        tally = _CALLS_MADE.get()
        if tally is not None:
            tally[0] += 1
        method: Callable[..., Awaitable[dict[str, Any]]] = getattr(client, _snake(operation))
        try:
            response = await method(**params)
        except (TimeoutError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
            raise self._failed(name, region, translate(exc, operation=name)) from exc
        except Exception as exc:  # aiohttp's errors are not botocore's; they are still "AWS unreachable"
            if type(exc).__module__.startswith("aiohttp"):
                raise self._failed(name, region, translate(exc, operation=name)) from exc
            self.metrics.aws_calls[(name, CALL_ERROR)] += 1
            raise
        self.metrics.aws_calls[(name, CALL_OK)] += 1
        self.freshness.aws_last_answer[region] = time.time()
        return response

    def _failed(self, name: str, region: str, error: AwsError) -> AwsError:
        outcome = (
            CALL_THROTTLED if isinstance(error, AwsThrottled)
            else CALL_NOT_FOUND if isinstance(error, AwsNotFound)
            else CALL_ERROR
        )
        self.metrics.aws_calls[(name, outcome)] += 1
        if is_unknown(error):
            self.freshness.aws_last_failure[region] = time.time()
            self.freshness.aws_last_error[region] = f"{name}: {error.code or type(error).__name__}"
        else:
            # "Not found", "access denied", a rejected parameter: AWS answered.
            self.freshness.aws_last_answer[region] = time.time()
        return error

    def total_calls(self) -> int:
        return sum(self.calls.values())

    # --- describe-image's own calls -------------------------------------------------------------

    async def find_available_ami(self, *, region: str, image_id: str) -> AmiInfo | None:
        """pcluster's AMI path: the first self-owned AMI tagged with this image id and build_status available."""
        response = await self._available_amis(region, tagged={"Name": f"tag:{TAG_IMAGE_ID}", "Values": [image_id]})
        images = response.get("Images") or []
        return ami_from_api(images[0]) if images else None

    async def _available_amis(self, region: str, *, tagged: dict[str, Any], **params: Any) -> dict[str, Any]:
        """DescribeImages of self-owned AMIs matching `tagged` whose build_status tag says available."""
        available = {"Name": f"tag:{TAG_BUILD_STATUS}", "Values": ["available"]}
        return await self._call("ec2", region, "DescribeImages", Owners=["self"], Filters=[tagged, available], **params)

    async def describe_stack(self, *, region: str, name: str) -> StackInfo | None:
        try:
            response = await self._call("cloudformation", region, "DescribeStacks", StackName=name)
        except AwsNotFound:
            return None
        stacks = response.get("Stacks") or []
        return stack_from_api(stacks[0]) if stacks else None

    async def image_resource_arn(self, *, region: str, stack_name: str) -> str | None:
        """Physical id of the stack's ParallelClusterImage resource; None when there is no such resource."""
        try:
            response = await self._call(
                "cloudformation",
                region,
                "DescribeStackResource",
                StackName=stack_name,
                LogicalResourceId=IMAGE_RESOURCE_LOGICAL_ID,
            )
        except AwsNotFound:
            return None
        except AwsError as exc:
            # CloudFormation answers ValidationError for a missing resource; pcluster treats any failure as absent.
            if exc.code == "ValidationError":
                return None
            raise
        detail = response.get("StackResourceDetail") or {}
        arn = detail.get("PhysicalResourceId")
        return str(arn) if arn else None

    async def imagebuilder_state(self, *, region: str, arn: str) -> ImagebuilderState:
        """GetImage's state; status None when the image is not there (describe then omits the fields)."""
        for attempt in range(IMAGEBUILDER_RETRIES):
            try:
                response = await self._call("imagebuilder", region, "GetImage", imageBuildVersionArn=arn)
            except AwsThrottled as exc:
                # botocore already retried the throttles it knows: only Image Builder's own is retried here.
                if exc.code != IMAGEBUILDER_THROTTLE or attempt == IMAGEBUILDER_RETRIES - 1:
                    raise
                await asyncio.sleep(IMAGEBUILDER_BACKOFF_SECONDS * 2**attempt)
                continue
            except (AwsNotFound, AwsAccessDenied):
                return ImagebuilderState(arn=arn)
            except AwsError as exc:
                if exc.code in {"InvalidParameterValueException", "InvalidRequestException"}:
                    return ImagebuilderState(arn=arn)
                raise
            state = (response.get("image") or {}).get("state") or {}
            return ImagebuilderState(arn=arn, status=state.get("status"), reason=state.get("reason"))
        raise AssertionError("unreachable")

    async def bucket_available(self, *, region: str, bucket: str) -> bool:
        """HeadBucket as pcluster does it: reachable -> a URL, refused (missing, forbidden) -> NOT_AVAILABLE."""
        try:
            await self._call("s3", region, "HeadBucket", Bucket=bucket)
        except (AwsNotFound, AwsAccessDenied):
            return False
        except AwsError as exc:
            if exc.code in {"400", "301", "PermanentRedirect", "InvalidBucketName"}:
                return False
            raise
        return True

    async def account_id(self, *, region: str) -> str:
        if region not in self._account_ids:
            response = await self._call("sts", region, "GetCallerIdentity")
            self._account_ids[region] = str(response["Account"])
        return self._account_ids[region]

    async def presign(self, *, region: str, bucket: str, key: str, expires_seconds: int) -> str:
        """A pre-signed GetObject URL: local computation, no AWS call."""
        client = await self.client("s3", region)
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_seconds
        )
        return url

    async def describe_ami(self, *, region: str, ami_id: str) -> AmiInfo | None:
        """One AMI by id (to learn which image an AMI event is about); None when it is not there."""
        try:
            response = await self._call("ec2", region, "DescribeImages", ImageIds=[ami_id], Owners=["self"])
        except AwsError as exc:
            if exc.code in {"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidAMIID.Malformed"}:
                return None
            raise
        images = response.get("Images") or []
        return ami_from_api(images[0]) if images else None

    # --- the event queue -----------------------------------------------------------------------

    async def receive_messages(
        self, *, region: str, queue_url: str, wait_seconds: int, max_messages: int = 10
    ) -> list[QueueMessage]:
        response = await self._call(
            "sqs",
            region,
            "ReceiveMessage",
            QueueUrl=queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["ApproximateReceiveCount"],
        )
        return [
            QueueMessage(
                message_id=raw["MessageId"],
                receipt_handle=raw["ReceiptHandle"],
                body=raw.get("Body", ""),
                receive_count=int((raw.get("Attributes") or {}).get("ApproximateReceiveCount", "1")),
            )
            for raw in response.get("Messages") or []
        ]

    async def delete_messages(self, *, region: str, queue_url: str, receipt_handles: dict[str, str]) -> list[str]:
        """DeleteMessageBatch; returns the entry ids that failed (it answers 200 with per-entry failures)."""
        if not receipt_handles:
            return []
        response = await self._call(
            "sqs",
            region,
            "DeleteMessageBatch",
            QueueUrl=queue_url,
            Entries=[{"Id": entry, "ReceiptHandle": handle} for entry, handle in receipt_handles.items()],
        )
        return [str(failure["Id"]) for failure in response.get("Failed") or []]

    # --- reconciliation's list calls -------------------------------------------------------------

    async def list_image_stacks(self, *, region: str) -> AsyncIterator[list[StackInfo]]:
        """Pages of parentless stacks carrying the parallelcluster:image_id tag."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"NextToken": token} if token else {}
            response = await self._call("cloudformation", region, "DescribeStacks", **params)
            yield [
                stack_from_api(raw)
                for raw in response.get("Stacks") or []
                if not raw.get("ParentId") and any(tag["Key"] == TAG_IMAGE_ID for tag in raw.get("Tags") or ())
            ]
            token = response.get("NextToken")
            if not token:
                return

    async def list_available_amis(self, *, region: str) -> AsyncIterator[list[AmiInfo]]:
        """Pages of self-owned AMIs with the image-id tag and build_status available."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"NextToken": token} if token else {}
            response = await self._available_amis(
                region, tagged={"Name": "tag-key", "Values": [TAG_IMAGE_ID]}, MaxResults=1000, **params
            )
            yield [ami_from_api(raw) for raw in response.get("Images") or []]
            token = response.get("NextToken")
            if not token:
                return

    # --- notifications' sinks (service.notify) ----------------------------------------------------

    async def publish(self, *, topic_arn: str, message: str, attributes: dict[str, str]) -> str:
        """SNS Publish in the topic's region, `attributes` as String message attributes; the message id."""
        region = topic_arn.split(":")[3]
        response = await self._call(
            "sns", region, "Publish", TopicArn=topic_arn, Message=message,
            MessageAttributes={
                name: {"DataType": "String", "StringValue": value} for name, value in attributes.items() if value
            },
        )  # fmt: skip
        return str(response.get("MessageId", ""))

    async def get_parameter(self, *, region: str, name: str) -> Parameter | None:
        """An SSM parameter's value and when it was last written; None when it does not exist."""
        try:
            response = await self._call("ssm", region, "GetParameter", Name=name)
        except AwsNotFound:
            return None
        raw = response.get("Parameter") or {}
        return Parameter(value=str(raw.get("Value", "")), modified=raw.get("LastModifiedDate"))

    async def put_parameter(self, *, region: str, name: str, value: str, description: str) -> None:
        """Set an SSM String parameter (overwriting it)."""
        await self._call(
            "ssm", region, "PutParameter", Name=name, Value=value, Type="String", Overwrite=True,
            Description=description[:1024],
        )  # fmt: skip


@dataclass(frozen=True)
class Parameter:
    value: str
    # Timezone-aware (botocore parses it), None if AWS did not say.
    modified: datetime | None


def _snake(operation: str) -> str:
    out = []
    for index, char in enumerate(operation):
        if char.isupper() and index:
            out.append("_")
        out.append(char.lower())
    return "".join(out)


# --- a build's evidence: ParallelCluster's image log operations (service.ingest.evidence, service.api.imagelogs) ---


def _plain(raw: dict[str, Any]) -> dict[str, Any]:
    """A response item as plain data: datetimes kept (the caller formats them), everything else as botocore gave."""
    return {key: value for key, value in raw.items() if key != "ResponseMetadata"}


async def stack_events(aws: Aws, *, region: str, stack_name: str, next_token: str | None = None) -> dict[str, Any]:
    """One page of DescribeStackEvents: {"StackEvents": [...], "NextToken"?}, as pcluster passes it on.

    AwsNotFound when the stack does not exist (CloudFormation's ValidationError "... does not exist")."""
    return await _page(
        aws, region, "cloudformation", "DescribeStackEvents", {"StackName": stack_name},
        items="StackEvents", token="NextToken", next_token=next_token,
    )  # fmt: skip


async def log_streams(aws: Aws, *, region: str, group: str, next_token: str | None = None) -> dict[str, Any]:
    """One page of DescribeLogStreams: {"logStreams": [...], "nextToken"?}; AwsNotFound without the group."""
    return await _page(
        aws, region, "logs", "DescribeLogStreams", {"logGroupName": group},
        items="logStreams", token="nextToken", next_token=next_token,
    )  # fmt: skip


async def _page(
    aws: Aws, region: str, service: str, operation: str, params: dict[str, Any], *, items: str, token: str,
    next_token: str | None,
) -> dict[str, Any]:
    """One page of a paged read: {items: [...], token?} with each item as plain data."""
    if next_token:
        params = {**params, token: next_token}
    response = await aws._call(service, region, operation, **params)
    page: dict[str, Any] = {items: [_plain(item) for item in response.get(items) or []]}
    if response.get(token):
        page[token] = str(response[token])
    return page


async def log_events(
    aws: Aws,
    *,
    region: str,
    group: str,
    stream: str,
    start_time_ms: int | None = None,
    end_time_ms: int | None = None,
    limit: int | None = None,
    start_from_head: bool | None = None,
    next_token: str | None = None,
) -> dict[str, Any]:
    """One GetLogEvents answer: {"events": [...], "nextForwardToken"?, "nextBackwardToken"?}, parameters passed
    exactly as pcluster passes them (a falsy limit or time is left out). AwsNotFound names the group or stream
    in its message ("The specified log group/stream does not exist.")."""
    params: dict[str, Any] = {"logGroupName": group, "logStreamName": stream}
    if start_time_ms:
        params["startTime"] = start_time_ms
    if end_time_ms:
        params["endTime"] = end_time_ms
    if limit:
        params["limit"] = limit
    if start_from_head is not None:
        params["startFromHead"] = start_from_head
    if next_token:
        params["nextToken"] = next_token
    response = await aws._call("logs", region, "GetLogEvents", **params)
    return _plain(response)

