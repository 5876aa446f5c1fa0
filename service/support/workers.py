"""N worker processes serving one listening socket: forked, watched, started again when one dies, drained on SIGTERM.

Domain-free: the caller says what a worker runs (`target`). The parent binds and listens; each worker is forked and
inherits the socket, and the kernel hands every new connection to one of the workers accepting on it. Connections
not yet accepted wait in the one queue, so a worker that dies loses none of them (with SO_REUSEPORT, a socket per
worker, the kernel spreads connections by a hash instead, resets those queued at a worker that dies, and lets any
process of the same user join the port unnoticed).

Fork, not spawn: a worker is up in a fraction of a second with the parent's imports (shared until written) and is
handed its socket and pipes by inheritance. The parent runs no thread and no event loop while it forks.

- Start: each worker says when its server is up (`Report.ready`). A worker that ends before every worker has
  said so is a failed start: the others are stopped and `Outcome` says which worker, how, and why (the one line
  it reported with `Report.refused`, if it did).
- Watch: a worker that ends later is logged with its status and started again, at once the first time, then
  after a pause that doubles (bounded) while its replacements keep ending before they are up.
- Stop: SIGTERM or SIGINT (or SIGHUP when the workers have nothing to reload) sends each worker one SIGTERM, and
  the parent waits for them all to drain, then exits 0 (130 after SIGINT); a worker that does not drain in time is
  killed and the status is 1. SIGHUP is passed on to the workers when they reload files on it.
- A worker whose parent died (SIGKILL, a crash) stops by itself, as on SIGTERM: it watches a pipe that only the
  parent holds open for writing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from service.support.loops import Backoff

log = logging.getLogger(__name__)

# How long a stop may take beyond the workers' own drain bound before the stragglers are killed.
STOP_MARGIN_SECONDS = 10.0
# The longest the parent sleeps between two looks at its workers (signals and pipes wake it sooner).
TICK_SECONDS = 1.0
# What Ctrl-C makes a process exit with (128 + SIGINT).
INTERRUPTED = 130


@dataclass(frozen=True)
class Worker:
    """One worker's place among the supervisor's: its number (1 to `count`) and the directory they all share."""

    number: int
    count: int
    directory: Path


class Report:
    """What a worker tells its parent: that it serves, or the one line that says why it will not."""

    def __init__(self, number: int, descriptor: int) -> None:
        self._number = number
        self._descriptor = descriptor

    def ready(self) -> None:
        self._say(b"ready", b"")

    def refused(self, reason: str) -> None:
        self._say(b"refused", " ".join(reason.split()).encode())

    def _say(self, kind: bytes, text: bytes) -> None:
        # One write of less than PIPE_BUF bytes: workers' lines never interleave.
        os.write(self._descriptor, b"%s %d %s\n" % (kind, self._number, text[:3000]))


# Runs in a worker: serves until told to stop; returns the worker's exit status.
Target = Callable[[Worker, Report], int]


@dataclass(frozen=True)
class Outcome:
    """How the supervisor ended: the exit status and, for a failed start, which worker, how it ended ("exit status
    3", "killed by SIGKILL") and the line it reported (Report.refused), if it did."""

    status: int
    failed_worker: int | None = None
    ended: str | None = None
    refusal: str | None = None


@dataclass
class _Slot:
    worker: Worker
    pid: int | None = None
    ready: bool = False
    # Ends in a row without being ready in between: how long the next start waits.
    failures: int = 0
    # When the next start is due (after a backoff).
    start_at: float = 0.0
    refusal: str | None = None


def describe_status(status: int) -> str:
    """A waitpid status in words: "exit status 3", "killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    def __init__(
        self, *, count: int, target: Target, drain_seconds: float, backoff: Backoff, reloads: bool,
    ) -> None:  # fmt: skip
        """`target` runs in each worker (the listening socket is the caller's, inherited); `drain_seconds`: how long
        a worker may take to drain after SIGTERM; `reloads`: whether workers re-read files on SIGHUP (else SIGHUP
        stops them, as it stops a single process)."""
        self._target = target
        self._drain_seconds = drain_seconds
        self._backoff = backoff
        self._reloads = reloads
        self._count = count
        self._signals: list[int] = []
        self._slots: list[_Slot] = []
        self._pending = b""
        # The signal that asked for the stop (SIGTERM after a failed start); None while serving.
        self._stopping: int | None = None
        self._deadline = 0.0
        self._failed: Outcome | None = None
        # Every worker has been up once: from then on a worker that ends is started again.
        self._started = False
        # A worker did not drain cleanly.
        self._unclean = False

    def run(self) -> Outcome:
        """Start the workers and watch them until every one has stopped."""
        directory = Path(tempfile.mkdtemp(prefix="statuscache-workers-"))
        self._slots = [_Slot(Worker(number, self._count, directory)) for number in range(1, self._count + 1)]
        self._reports, self._report_write = os.pipe()
        self._lifeline, self._lifeline_write = os.pipe()
        self._wake, self._wake_write = os.pipe()
        for descriptor in (self._reports, self._wake, self._wake_write):
            os.set_blocking(descriptor, False)
        previous_wakeup = signal.set_wakeup_fd(self._wake_write)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, self._noted) for signum in handled}
        try:
            for slot in self._slots:
                self._start(slot)
            while self._stopping is None or any(slot.pid is not None for slot in self._slots):
                self._step()
        except BaseException:
            # Not expected (a fork refused?): the workers drain by themselves (and would once the lifeline closes).
            self._send(signal.SIGTERM)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            for descriptor in self._pipes():
                os.close(descriptor)
            shutil.rmtree(directory, ignore_errors=True)
        if self._failed is not None:
            return self._failed
        if self._unclean:
            return Outcome(status=1)
        return Outcome(status=INTERRUPTED if self._stopping == signal.SIGINT else 0)

    def _pipes(self) -> tuple[int, ...]:
        return (self._reports, self._report_write, self._lifeline, self._lifeline_write, self._wake, self._wake_write)

    def _noted(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the loop, which reads the list once select wakes (set_wakeup_fd).
        self._signals.append(signum)

    def _step(self) -> None:
        """Wait for news (a signal, a worker's report, a restart due, at most a tick), then act on it."""
        select.select([self._reports, self._wake], [], [], self._wait_seconds())
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake, 512):
                pass
        self._read_reports()
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGHUP and self._reloads:
                self._send(signal.SIGHUP)
            elif signum != signal.SIGCHLD:
                self._stop(signum)
        self._reap()
        if self._stopping is None:
            for slot in self._slots:
                if slot.pid is None and slot.start_at <= time.monotonic():
                    self._start(slot)
        elif time.monotonic() > self._deadline:
            self._kill_stragglers()

    def _wait_seconds(self) -> float:
        if self._stopping is not None:
            return min(TICK_SECONDS, max(0.0, self._deadline - time.monotonic()))
        due = [slot.start_at - time.monotonic() for slot in self._slots if slot.pid is None]
        return max(0.0, min([TICK_SECONDS, *due]))

    def _stop(self, signum: int) -> None:
        """Ask every worker to drain (once: a second SIGTERM would not be a drained one)."""
        if self._stopping is not None:
            return
        self._stopping = signum
        self._deadline = time.monotonic() + self._drain_seconds + STOP_MARGIN_SECONDS
        live = sum(slot.pid is not None for slot in self._slots)
        log.info("%s: draining %d workers", signal.Signals(signum).name, live)
        self._send(signal.SIGTERM)

    def _send(self, signum: int) -> None:
        for slot in self._slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _kill_stragglers(self) -> None:
        for slot in self._slots:
            if slot.pid is not None:
                log.error("worker %d (pid %d) did not drain in time: killing it", slot.worker.number, slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
                self._unclean = True
        self._deadline = float("inf")

    def _start(self, slot: _Slot) -> None:
        slot.ready, slot.refusal = False, None
        pid = os.fork()
        if pid == 0:
            self._become_worker(slot.worker)
        slot.pid = pid
        log.info("worker %d started (pid %d)", slot.worker.number, pid)

    def _become_worker(self, worker: Worker) -> None:
        """In the forked child: undo the parent's signal handling, watch the lifeline, run the target, exit."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            # The lifeline's write end is only the parent's: the pipe reads end-of-file in every worker once it is
            # gone. The parent's ends of the other pipes are not the worker's either.
            for descriptor in (self._lifeline_write, self._reports, self._wake, self._wake_write):
                os.close(descriptor)
            threading.Thread(target=_stop_when_orphaned, args=(self._lifeline,), daemon=True).start()
            status = self._target(worker, Report(worker.number, self._report_write))
        except KeyboardInterrupt:
            status = INTERRUPTED
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            # Never back into the parent's code (its loop, its finally blocks, its atexit handlers).
            os._exit(status)

    def _read_reports(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._reports, 65536):
                self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode(errors="replace").partition(" ")
            number, _, text = rest.partition(" ")
            slot = self._slots[int(number) - 1]
            if kind == "ready":
                slot.ready, slot.failures = True, 0
                log.info("worker %d is serving", slot.worker.number)
                self._started = self._started or all(other.ready for other in self._slots)
            elif kind == "refused":
                slot.refusal = text

    def _reap(self) -> None:
        """Collect the workers that ended, and decide what each end means."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((slot for slot in self._slots if slot.pid == pid), None)
            if slot is not None:
                slot.pid = None
                self._ended(slot, pid=pid, status=status)

    def _ended(self, slot: _Slot, *, pid: int, status: int) -> None:
        # Read once more: a worker's last report may have arrived after the select that woke for its end.
        self._read_reports()
        code = os.waitstatus_to_exitcode(status)
        how = describe_status(status)
        number = slot.worker.number
        if self._stopping is not None:
            if code not in (0, INTERRUPTED):
                log.error("worker %d (pid %d) did not drain cleanly (%s)", number, pid, how)
                self._unclean = True
            return
        if not self._started and not slot.ready:
            log.error("worker %d (pid %d) ended before it was serving (%s): stopping the others", number, pid, how)
            self._failed = Outcome(
                status=code if code > 0 else 1, failed_worker=number, ended=how, refusal=slot.refusal
            )
            self._stop(signal.SIGTERM)
            return
        slot.failures += 1
        # At once after a worker that was serving; a replacement that ends before it serves waits longer each time.
        delay = 0.0 if slot.failures == 1 else self._backoff.delay(slot.failures - 1)
        slot.start_at = time.monotonic() + delay
        said = f": {slot.refusal}" if slot.refusal else ""
        log.error("worker %d (pid %d) ended (%s)%s; starting another in %.3gs", number, pid, how, said, delay)


def _stop_when_orphaned(lifeline: int) -> None:
    """In a worker: block until the parent is gone (end of file), then stop as SIGTERM would stop it."""
    while os.read(lifeline, 1):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
