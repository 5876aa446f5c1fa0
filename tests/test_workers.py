"""The supervisor of `serve --workers`: a failed start stops the others and says why, a worker that dies is started
again, SIGTERM drains them all (0), SIGINT too (130), and workers whose parent was killed stop by themselves.

Each case runs a supervisor in a process of its own (it forks, and handles signals), over workers that only report,
sleep and exit; `serve --workers` itself is tested in test_serve_workers.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.support.workers import describe_status

pytestmark = pytest.mark.slow

SUPERVISED = """
import dataclasses, json, logging, os, signal, sys, time
from service.support.loops import Backoff
from service.support.workers import Supervisor

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
scenario = sys.argv[1]


def target(worker, report):
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    if scenario == "refuses" and worker.number == 2:
        time.sleep(0.3)
        report.refused("ConfigurationError the tokens file is gone")
        return 1
    crashed = worker.directory / f"crashed-{worker.number}"
    report.ready()
    if scenario == "crashes" and worker.number == 1 and not crashed.exists():
        crashed.touch()
        os._exit(7)
    print(f"worker {worker.number} pid {os.getpid()}", file=sys.stderr, flush=True)
    while not stopped:
        time.sleep(0.02)
    return 0


outcome = Supervisor(count=2, target=target, drain_seconds=5, backoff=Backoff(0.1, 0.5), reloads=False).run()
print(json.dumps(dataclasses.asdict(outcome)), flush=True)
"""


class Supervised:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log
        self.kept: str | None = None

    def output(self) -> str:
        """What the supervisor and its workers logged (kept once the run is over)."""
        return self.kept if self.kept is not None else self.log.read_text()

    def until(self, text: str, *, count: int = 1, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while self.output().count(text) < count:
            assert self.process.poll() is None or self.output().count(text) >= count, self.output()
            assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{self.output()}"
            time.sleep(0.05)

    def outcome(self) -> dict[str, Any]:
        stdout, _ = self.process.communicate(timeout=20)
        result: dict[str, Any] = json.loads(stdout)
        return result


@contextmanager
def supervised(scenario: str) -> Iterator[Supervised]:
    descriptor, name = tempfile.mkstemp(prefix="statuscache-supervised-", suffix=".log")
    with os.fdopen(descriptor, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", SUPERVISED, scenario], stdout=subprocess.PIPE, stderr=log, text=True
        )
    run = Supervised(process, Path(name))
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        run.kept = run.output()
        Path(name).unlink()


def test_a_worker_refusing_to_start_stops_the_others_and_its_line_is_the_outcome() -> None:
    with supervised("refuses") as run:
        outcome = run.outcome()
    assert run.process.returncode == 0
    assert outcome == {
        "status": 1, "failed_worker": 2, "ended": "exit status 1",
        "refusal": "ConfigurationError the tokens file is gone",
    }  # fmt: skip
    assert "worker 2 (pid" in run.output() and "ended before it was serving (exit status 1)" in run.output()


def test_a_worker_that_dies_is_started_again_and_sigterm_drains_them_all() -> None:
    with supervised("crashes") as run:
        run.until("ended (exit status 7); starting another in 0s")
        run.until("worker 1 is serving", count=2)
        run.until("worker 1 pid")
        run.process.send_signal(signal.SIGTERM)
        outcome = run.outcome()
    assert outcome == {"status": 0, "failed_worker": None, "ended": None, "refusal": None}
    assert "SIGTERM: draining 2 workers" in run.output()


def test_sigint_drains_them_all_and_says_interrupted() -> None:
    with supervised("serves") as run:
        run.until("is serving", count=2)
        run.process.send_signal(signal.SIGINT)
        outcome = run.outcome()
    assert outcome["status"] == 130


def test_workers_whose_parent_was_killed_stop_by_themselves() -> None:
    with supervised("serves") as run:
        run.until("pid", count=4)  # "started (pid N)" and "worker N pid M" for both
        pids = [int(line.split()[-1]) for line in run.output().splitlines() if " pid " in line]
        assert len(pids) == 2
        run.process.kill()
        run.process.wait()
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in pids):
            assert time.monotonic() < deadline, "the orphaned workers did not stop"
            time.sleep(0.05)


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, and not a zombie its new parent has yet to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("status", "said"),
    [(0, "exit status 0"), (3 << 8, "exit status 3"), (signal.SIGKILL, "killed by SIGKILL")],
)
def test_a_workers_end_in_words(status: int, said: str) -> None:
    assert describe_status(status) == said
