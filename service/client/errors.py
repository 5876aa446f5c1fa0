"""The client's errors, named as the ParallelCluster API names them; every one carries `.message` and `.status`.

ApiException                      .message (the service's own words, unchanged), .status (the HTTP status)
 ├── BadRequestException          400: the request is wrong (bad id, region, filter, token, date)
 ├── UnauthorizedClientError      401: no valid token
 ├── NotFoundException            404: no such image (or route)
 ├── LimitExceededException       429: .retry_after, the seconds to wait (Retry-After)
 ├── InternalServiceException     5xx: the service failed or could not reach AWS (503: .retry_after if given)
 └── ServiceUnreachableException  no answer at all (refused, reset, timed out): .status is None

WaitError                         wait_image did not see what it waited for (not an answer of the API)
 ├── ImageWaitFailed              the image reached a state from which that can no longer come: .document
 └── ImageWaitTimeout             the timeout passed first

httpx's exceptions never escape: they are translated here, in `from_response` and `unreachable`.
"""

from __future__ import annotations

import json
import math

import httpx


class ApiException(Exception):
    """Base of every error the client raises: the service's message and the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class BadRequestException(ApiException):
    pass


class UnauthorizedClientError(ApiException):
    pass


class NotFoundException(ApiException):
    pass


class LimitExceededException(ApiException):
    pass


class InternalServiceException(ApiException):
    pass


class ServiceUnreachableException(ApiException):
    pass


class WaitError(Exception):
    """Base of what wait_image raises when the image did not reach what was waited for."""


class ImageWaitFailed(WaitError):
    """The image can no longer reach what was waited for (a failed build, a failed deletion, gone): `.document`
    is its last describe document in the seed's shape (for a gone image: image_id, region and message)."""

    def __init__(self, reason: str, *, document: dict[str, object]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.document = document


class ImageWaitTimeout(WaitError):
    """The timeout passed before the image reached what was waited for, or a state that rules it out."""


_BY_STATUS: dict[int, type[ApiException]] = {
    400: BadRequestException,
    401: UnauthorizedClientError,
    404: NotFoundException,
    429: LimitExceededException,
}


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after", "")
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def message_of(response: httpx.Response) -> str:
    """The `message` of a pcluster-shaped error body, else the body's text, else the reason phrase."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message
    text = response.text.strip()
    return text or response.reason_phrase or f"HTTP {response.status_code}"


def from_response(response: httpx.Response) -> ApiException:
    """The exception for an error answer (status 400 and above)."""
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServiceException if status >= 500 else ApiException)
    return cls(message_of(response), status=status, retry_after=_retry_after(response))


def unreachable(exc: httpx.TransportError, *, base_url: str) -> ServiceUnreachableException:
    reason = str(exc) or type(exc).__name__
    return ServiceUnreachableException(f"statuscache at {base_url} could not be reached: {reason}", status=None)
