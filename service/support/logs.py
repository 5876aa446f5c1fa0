"""Log lines as text (a terminal) or one JSON object per line (a log pipeline), with the fields of the work in hand.

Fields come from two places: `extra={...}` at the call (`log.warning("...", extra={"region": r})`), and
the context the code that started the work bound for everything it causes (`bound(fields)`: a request's
id, its caller). The context lives in a ContextVar, so tasks started while it is bound (a live lookup a
request started) keep it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

# What the code that started the work in hand bound for every line it causes (a Mapping, read when a line is
# written, so fields set later, such as the caller once authenticated, are still seen).
CONTEXT: ContextVar[Mapping[str, Any] | None] = ContextVar("statuscache_log_context", default=None)

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def bound(fields: Mapping[str, Any]) -> Iterator[None]:
    """`fields` in every line logged until the block ends (and in the tasks started inside it)."""
    token = CONTEXT.set(fields)
    try:
        yield
    finally:
        CONTEXT.reset(token)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The line's own fields (`extra=`), after the bound context's; None values left out."""
    fields: dict[str, Any] = {}
    context = CONTEXT.get()
    if context is not None:
        fields.update((key, value) for key, value in context.items() if value is not None)
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_") and value is not None:
            fields[key] = value
    return fields


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the fields (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """The plain format for a terminal, with the fields as `key=value` after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = fields_of(record)
        if fields:
            text += " [" + " ".join(f"{key}={value}" for key, value in fields.items()) + "]"
        return text


def formatter(kind: str) -> logging.Formatter:
    """The formatter for STATUSCACHE_LOG_FORMAT: "json" or "text"."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {kind!r}")
