"""Log lines as text (a terminal) or one JSON object per line (a log pipeline), with the fields of the work in hand.

Fields come from two places: `extra={...}` at the call (`log.warning("...", extra={"region": r})`), and
the context the code that started the work bound for everything it causes (`bound(fields)`: a request's
id, its caller). The context lives in a ContextVar, so tasks started while it is bound (a live lookup a
request started) keep it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

# What the code that started the work in hand bound for every line it causes: a mapping and which of its keys
# are which fields ((field, key) pairs). The mapping is read when a line is written, so a value set later (the
# caller, once authenticated) is still seen, and binding costs no copy (a request binds its ASGI scope).
Fields = tuple[Mapping[str, Any], Sequence[tuple[str, str]]]
CONTEXT: ContextVar[Fields | None] = ContextVar("statuscache_log_context", default=None)

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
# uvicorn adds a copy of its message with terminal colours.
_IGNORED = _STANDARD | {"color_message"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def bound(fields: Mapping[str, Any]) -> Iterator[None]:
    """`fields` in every line logged until the block ends (and in the tasks started inside it)."""
    token = CONTEXT.set((fields, [(key, key) for key in fields]))
    try:
        yield
    finally:
        CONTEXT.reset(token)


def _text(value: Any) -> Any:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The bound context's fields, then the line's own (`extra=`); None values left out."""
    fields: dict[str, Any] = {}
    context = CONTEXT.get()
    if context is not None:
        mapping, names = context
        for name, key in names:
            value = mapping.get(key)
            if value is not None:
                fields[name] = _text(value)
    for key, value in vars(record).items():
        if key not in _IGNORED and not key.startswith("_") and value is not None:
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


class ProcessFields(logging.Filter):
    """The same fields on every line that passes (a worker's number), as if each call had passed them in `extra`."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


def add_fields(**fields: Any) -> None:
    """`fields` on every line this process writes from now on (through the root logger's handlers)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(ProcessFields(fields))


def formatter(kind: str) -> logging.Formatter:
    """The formatter for STATUSCACHE_LOG_FORMAT: "json" or "text"."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {kind!r}")
