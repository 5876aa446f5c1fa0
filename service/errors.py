"""The service's error tree. botocore errors are translated into these in service.aws, nowhere else.

StatusCacheError
 ├── ConfigurationError        bad settings; the process refuses to start
 ├── SchemaError               the database is not at the migrations' head
 ├── StartupFailed             the server's start-up failed after the checks (uvicorn logged why)
 ├── MalformedEvent            a queue message is not an event we can read (kept as poison, counted, deleted)
 ├── DatabaseUnavailable       the database cannot be reached or did not answer in time (503 with Retry-After)
 ├── QueryTimeout              a read of history took longer than its bound (HTTP 503; nothing was changed)
 ├── RequestError              a client's request is wrong (HTTP 4xx; never reaches AWS or SQL)
 │    ├── BadRequest           400
 │    │    └── BadToken        a nextToken this service did not issue
 │    ├── NotFound             404
 │    ├── TooManyRequests      429 (our own live-lookup budget)
 │    ├── AtCapacity           503 (a bound this server keeps, e.g. change-stream clients; retry, or elsewhere)
 │    └── NotYetListed         503 (a list of a region no reconcile pass has listed yet, or not by that moment)
 └── AwsError                  AWS could not answer
      ├── AwsThrottled         throttling / rate exceeded (429 when nothing cached)
      ├── AwsNotFound          the resource does not exist (a normal answer on lookups)
      ├── AwsAccessDenied      credentials lack a permission
      └── AwsUnavailable       network, endpoint or 5xx trouble (503 when nothing cached)
"""

from __future__ import annotations


class StatusCacheError(Exception):
    """Base of every error this service raises on purpose."""


class ConfigurationError(StatusCacheError):
    pass


class SchemaError(StatusCacheError):
    pass


class StartupFailed(StatusCacheError):
    pass


class MalformedEvent(StatusCacheError):
    pass


class DatabaseUnavailable(StatusCacheError):
    """Translated from the drivers' errors in one place (service.store.db.unavailable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueryTimeout(StatusCacheError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"the query took longer than {seconds:g}s; ask for a narrower window or fewer rows")
        self.seconds = seconds


class RequestError(StatusCacheError):
    status_code = 400

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(RequestError):
    status_code = 400


class BadToken(BadRequest):
    def __init__(self, message: str = "Bad Request: nextToken is not one this service issued") -> None:
        super().__init__(message)


class NotFound(RequestError):
    status_code = 404


class TooManyRequests(RequestError):
    status_code = 429


class AtCapacity(RequestError):
    status_code = 503


class NotYetListed(RequestError):
    """A list of a region no reconcile pass has listed yet (Retry-After), or had not by the moment asked."""

    status_code = 503


class AwsError(StatusCacheError):
    def __init__(self, message: str, *, code: str | None = None, operation: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.operation = operation


class AwsThrottled(AwsError):
    pass


class AwsNotFound(AwsError):
    pass


class AwsAccessDenied(AwsError):
    pass


class AwsUnavailable(AwsError):
    pass


# What serve, poll, sync and migrate refuse to start for: one line on stderr and an exit status (service.__main__).
REFUSALS: tuple[type[StatusCacheError], ...] = (SchemaError, ConfigurationError, DatabaseUnavailable, StartupFailed)
