"""Log lines as JSON objects or text, with the bound context's fields and the line's own."""

from __future__ import annotations

import asyncio
import logging
import sys

import orjson
import pytest

from service.support import logs


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("service.test", logging.WARNING, __file__, 10, message, args or ("world",), None)
    for key, value in extra.items():
        setattr(made, key, value)
    made.created = 1_700_000_000.123456
    return made


def test_a_json_line_has_time_level_logger_message_then_fields() -> None:
    line = orjson.loads(logs.JsonFormatter().format(record(region="us-east-1", image_id="img-1")))

    assert line == {
        "time": "2023-11-14T22:13:20.123Z",
        "level": "WARNING",
        "logger": "service.test",
        "message": "hello world",
        "region": "us-east-1",
        "image_id": "img-1",
    }


def test_a_json_line_is_one_line_whatever_the_message_holds() -> None:
    text = logs.JsonFormatter().format(record("two\nlines %s", "and \"quotes\""))

    assert "\n" not in text
    assert orjson.loads(text)["message"] == 'two\nlines and "quotes"'


def test_the_bound_context_is_in_every_line_and_in_tasks_started_inside() -> None:
    formatter = logs.JsonFormatter()

    async def in_a_task() -> str:
        return formatter.format(record())

    async def run() -> tuple[str, str]:
        with logs.bound({"request_id": "abc-1", "caller": None}):
            inside = formatter.format(record(image_id="img"))
            task = asyncio.create_task(in_a_task())
        return inside, await task

    inside, from_task = asyncio.run(run())
    assert orjson.loads(inside)["request_id"] == "abc-1"
    assert "caller" not in orjson.loads(inside)  # None values are left out
    assert orjson.loads(from_task)["request_id"] == "abc-1"
    assert "request_id" not in orjson.loads(formatter.format(record()))


def test_context_values_are_read_when_the_line_is_written() -> None:
    # A request binds its scope before authentication (further in) has named the caller.
    scope: dict[str, object] = {"id": b"req-7"}
    token = logs.CONTEXT.set((scope, [("request_id", "id"), ("caller", "who")]))
    try:
        scope["who"] = "ci-bot"
        line = orjson.loads(logs.JsonFormatter().format(record()))
    finally:
        logs.CONTEXT.reset(token)
    assert (line["request_id"], line["caller"]) == ("req-7", "ci-bot")


def test_an_exception_is_one_field_of_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record(exc_info=None)
        failed.exc_info = sys.exc_info()
    line = orjson.loads(logs.JsonFormatter().format(failed))
    assert line["exception"].startswith("Traceback") and line["exception"].endswith("ValueError: boom")


def test_text_lines_keep_the_terminal_format_and_add_the_fields() -> None:
    text = logs.TextFormatter().format(record(region="eu-west-1"))

    assert text.endswith(" WARNING service.test: hello world [region=eu-west-1]")
    assert logs.TextFormatter().format(record()).endswith("service.test: hello world")


def test_uvicorns_coloured_copy_of_the_message_is_not_a_field() -> None:
    line = orjson.loads(logs.JsonFormatter().format(record(color_message="\x1b[1mhello\x1b[0m")))
    assert "color_message" not in line


@pytest.mark.parametrize(("kind", "cls"), [("json", logs.JsonFormatter), ("text", logs.TextFormatter)])
def test_the_formatter_follows_the_setting(kind: str, cls: type[logging.Formatter]) -> None:
    assert isinstance(logs.formatter(kind), cls)
    with pytest.raises(ValueError, match="xml"):
        logs.formatter("xml")
