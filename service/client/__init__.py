"""The Python client of statuscache: ParallelCluster's describe-image as the seed documents it, and more.

    from service.client import describe_image
    describe_image("custom-image-id")     # {'image_id': ..., 'creation_time': datetime(...), ...}

The module-level calls use a shared Client for the service at STATUSCACHE_URL (default
http://127.0.0.1:8080), with STATUSCACHE_TOKEN as its bearer token if set; both are read when a call is
made. For explicit configuration, use Client(base_url, token=..., timeout=...) or its twin AsyncClient.
Errors raise ApiException subclasses named as the ParallelCluster API names them (service.client.errors).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from service.client.api import DEFAULT_URL, AsyncClient, Client, Moment
from service.client.errors import (
    ApiException,
    BadRequestException,
    ImageWaitFailed,
    ImageWaitTimeout,
    InternalServiceException,
    LimitExceededException,
    NotFoundException,
    ServiceUnreachableException,
    UnauthorizedClientError,
    WaitError,
)
from service.client.events import ImageChange

__all__ = [
    "ApiException",
    "AsyncClient",
    "BadRequestException",
    "Client",
    "ImageChange",
    "ImageWaitFailed",
    "ImageWaitTimeout",
    "InternalServiceException",
    "LimitExceededException",
    "NotFoundException",
    "ServiceUnreachableException",
    "UnauthorizedClientError",
    "WaitError",
    "builds_summary",
    "describe_image",
    "export_transitions",
    "image_builds",
    "image_history",
    "image_transitions",
    "iter_images",
    "list_images",
    "wait_image",
    "watch",
]

# The client's own environment (not the service's settings): where the service is, and how to prove who we are.
URL_VARIABLE = "STATUSCACHE_URL"
TOKEN_VARIABLE = "STATUSCACHE_TOKEN"

_lock = threading.Lock()
_shared: dict[tuple[str, str | None], Client] = {}


def from_environment(env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(base URL, token) as STATUSCACHE_URL and STATUSCACHE_TOKEN say."""
    env = os.environ if env is None else env
    return (env.get(URL_VARIABLE) or DEFAULT_URL), (env.get(TOKEN_VARIABLE) or None)


def default_client() -> Client:
    """The shared Client for the environment's service (one per URL and token, so connections are reused)."""
    key = from_environment()
    with _lock:
        client = _shared.get(key)
        if client is None:
            client = _shared[key] = Client(key[0], token=key[1])
        return client


def describe_image(image_id: str, region: str | None = None, *, at: datetime | str | None = None) -> Any:
    return default_client().describe_image(image_id, region, at=at)


def list_images(
    image_status: str, region: str | None = None, next_token: str | None = None, *, at: Moment | None = None
) -> Any:
    return default_client().list_images(image_status, region, next_token, at=at)


def iter_images(image_status: str, region: str | None = None, *, at: Moment | None = None) -> Iterator[dict[str, Any]]:
    return default_client().iter_images(image_status, region, at=at)


def image_transitions(
    region: str | None = None, since: Moment | None = None, until: Moment | None = None, **filters: str | None
) -> Iterator[dict[str, Any]]:
    """Every image's status transitions in [since, until); filters: image_build_status, image_id, source, order."""
    return default_client().image_transitions(region, since, until, **filters)


def export_transitions(
    media: str = "ndjson",
    region: str | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    **filters: str | None,
) -> Iterator[bytes]:
    """The transitions as an NDJSON or CSV export, streamed in chunks of bytes."""
    return default_client().export_transitions(media, region, since, until, **filters)


def image_builds(
    region: str | None = None, since: Moment | None = None, until: Moment | None = None, **filters: str | None
) -> Iterator[dict[str, Any]]:
    """Every build that started in [since, until); filters: version, outcome, image_id, order."""
    return default_client().image_builds(region, since, until, **filters)


def builds_summary(
    region: str | None = None, since: Moment | None = None, until: Moment | None = None, *, group_by: str = "version"
) -> Any:
    return default_client().builds_summary(region, since, until, group_by=group_by)


def image_history(
    image_id: str, region: str | None = None, since: datetime | str | None = None, until: datetime | str | None = None
) -> Any:
    return default_client().image_history(image_id, region, since, until)


def watch(
    region: str | None = None, image_id: str | None = None, last_event_id: int | None = None
) -> Iterator[ImageChange]:
    return default_client().watch(region, image_id, last_event_id)


def wait_image(
    image_id: str, region: str | None = None, *, until: str = "complete", timeout: float | None = None
) -> dict[str, Any]:
    """Until the image is BUILD_COMPLETE (or, until="deleted", gone): its document; ImageWaitFailed when that
    can no longer come, ImageWaitTimeout after `timeout` seconds. On the change stream: no polling."""
    document: dict[str, Any] = default_client().wait_image(image_id, region, until=until, timeout=timeout)
    return document
