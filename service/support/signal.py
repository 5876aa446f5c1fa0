"""A signal that wakes everyone waiting for news ("something changed"), without holding up whoever sends it."""

from __future__ import annotations

import asyncio


class ChangeSignal:
    """Wakes everyone waiting for "something changed" (the change stream), without holding up the writer."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """Shutdown: wake every waiter now, and from now on never make one wait."""
        self.closed = True
        self.notify()

    async def wait(self, *, seconds: float | None = None) -> None:
        """Until the next change, or `seconds` at most (None: no bound)."""
        if self.closed:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            pass
