"""One in-flight task per key: callers asking for a key that is already being worked on wait for that work.

The work runs as its own task, shielded from its callers: a caller that gives up (a client that
disconnects, a timeout) stops waiting without cancelling the work the other callers still wait for.
The key is forgotten when the work finishes, so the next call after that starts afresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def __contains__(self, key: K) -> bool:
        """Whether work for `key` is in flight (a call now would join it)."""
        return key in self._tasks

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The result of `work()` for `key`, started now or joined if already in flight; its exception if it fails.

        `work` is called only when no work for `key` is in flight.
        """
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(work())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        # Every waiter already got the outcome; if all of them gave up, nobody is left to: not an error.
        if not task.cancelled():
            task.exception()
