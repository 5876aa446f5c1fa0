"""The project's FakeAws, also timing how long it is busy answering (moto's share of a pass's wall time)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

from service.demo.fakeaws import FakeAws


class TimedFakeAws(FakeAws):
    """Busy time is wall time with at least one request in flight, so concurrent requests are not double-counted."""

    def __init__(self) -> None:
        self._busy_lock = threading.Lock()
        self._busy = 0.0
        self._in_flight = 0
        self._busy_since = 0.0
        super().__init__()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        with self._busy_lock:
            if self._in_flight == 0:
                self._busy_since = time.perf_counter()
            self._in_flight += 1
        try:
            # moto answers with a list of chunks: the work is done when this returns.
            return list(super().__call__(environ, start_response))
        finally:
            with self._busy_lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._busy += time.perf_counter() - self._busy_since

    def busy_seconds(self) -> float:
        with self._busy_lock:
            ongoing = time.perf_counter() - self._busy_since if self._in_flight else 0.0
            return self._busy + ongoing
