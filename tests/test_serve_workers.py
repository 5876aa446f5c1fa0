"""`statuscache serve --workers 2` as an operator runs it, on SQLite and on PostgreSQL: one port answered by both
workers, one of them polling (and another taking over when it dies), a change written through one worker reaching
stream clients of both, /metrics showing both, SIGTERM draining both, SIGHUP reloading both; STATUSCACHE_WORKERS the
same."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from tests.conftest import REGION
from tests.test_e2e import Server, wait_until_ready
from tests.test_exposition import samples, value
from tests.test_reload import ALICE, BOB, line

pytestmark = pytest.mark.slow

SHUTDOWN_SECONDS = 5.0


@pytest.fixture
def env(database_url: str, aws_state: FakeAws) -> dict[str, str]:
    return {
        **os.environ,
        "STATUSCACHE_DATABASE_URL": database_url,
        "STATUSCACHE_REGIONS": REGION,
        "STATUSCACHE_LOG_LEVEL": "INFO",
        "STATUSCACHE_SHUTDOWN_SECONDS": str(SHUTDOWN_SECONDS),
        "STATUSCACHE_SSE_HEARTBEAT_SECONDS": "1",
    }


@contextmanager
def started(env: dict[str, str], *args: str) -> Iterator[Server]:
    """`serve` with `args`, ready; stopped (if the test did not) and its log removed afterwards."""
    server = Server(env=env, args=list(args))
    try:
        wait_until_ready(server.base, process=server.process)
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()
        server.log.unlink(missing_ok=True)


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Server]:
    with started(env, "--workers", "2") as server:
        yield server


def until(condition: Callable[[], Any], *, seconds: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not within {seconds:g}s: {what}"
        time.sleep(0.1)
    return result


def scrape(server: Server) -> str:
    response = httpx.get(f"{server.base}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def by_worker(text: str, name: str, **labels: str) -> dict[str, float]:
    """The samples of `name` (with `labels`) per worker label."""
    return {
        sample.labels["worker"]: sample.value
        for sample in samples(text)
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    }


def pollers(text: str) -> list[str]:
    return [worker for worker, held in by_worker(text, "statuscache_poller").items() if held == 1]


def reconciled(server: Server) -> str | None:
    """The worker that polls, once its first reconcile pass is done."""
    text = scrape(server)
    passes = by_worker(text, "statuscache_reconcile_passes_total", outcome="ok")
    holders = pollers(text)
    return holders[0] if len(holders) == 1 and passes.get(holders[0], 0) >= 1 else None


class Follower:
    """A change-stream client in a thread of its own: the lines it read, and whether the stream ended."""

    def __init__(self, base: str) -> None:
        self.lines: list[str] = []
        self.status: int | None = None
        self.ended = False
        self.error: str | None = None
        self.thread = threading.Thread(target=self._follow, args=(base,), daemon=True)
        self.thread.start()

    def _follow(self, base: str) -> None:
        try:
            with httpx.stream("GET", f"{base}/v3/image-changes", timeout=30) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    self.lines.append(line)
            self.ended = True
        except Exception as exc:  # reported by the assertions
            self.error = repr(exc)


def test_one_port_answers_from_both_workers_and_exactly_one_of_them_polls(
    env: dict[str, str], aws_state: FakeAws
) -> None:
    aws_state.create_ami(region=REGION, image_id="worked-done")
    with started(env, "--workers", "2") as workers:
        poller = until(lambda: reconciled(workers), what="the poller's first reconcile")

        def both_answered() -> bool:
            # A connection of its own each time: the kernel hands each to whichever worker accepts it.
            response = httpx.get(f"{workers.base}/v3/images/custom/worked-done", timeout=10)
            assert response.status_code == 200 and response.headers["x-cache"] == "HIT"
            answered = by_worker(scrape(workers), "statuscache_http_requests_total", cache="hit")
            return set(answered) == {"1", "2"}

        until(both_answered, what="describes answered by both workers")
        text = scrape(workers)
        assert pollers(text) == [poller]
        other = ({"1", "2"} - {poller}).pop()
        # The poller's loops run in it alone: its reconcile passes, its lease; none in the other worker.
        assert set(by_worker(text, "statuscache_reconcile_passes_total")) == {poller}
        assert by_worker(text, "statuscache_reconcile_lease_held", region=REGION) == {poller: 1, other: 0}
        # Every worker's own series are in the scrape, whichever worker answered it; the image states once.
        assert set(by_worker(text, "process_resident_memory_bytes")) == {"1", "2"}
        assert value(text, "statuscache_images", region=REGION, image_build_status="BUILD_COMPLETE") == 1
        output = workers.stop()
        assert workers.process.returncode == 0, output
        assert len(re.findall(r"this worker holds the poller lease", output)) == 1, output
        assert "Traceback" not in output


def test_a_change_reaches_stream_clients_of_every_worker_and_sigterm_drains_them_all(
    workers: Server, aws_state: FakeAws
) -> None:
    followers: list[Follower] = []

    def clients_on_both() -> bool:
        # Streams opened one at a time until both workers have one (the kernel picks the worker).
        followers.append(Follower(workers.base))
        time.sleep(0.2)
        connected = by_worker(scrape(workers), "statuscache_stream_clients")
        return connected.get("1", 0) >= 1 and connected.get("2", 0) >= 1

    until(clients_on_both, what="stream clients on both workers")
    until(lambda: sum(by_worker(scrape(workers), "statuscache_stream_clients").values()) == len(followers))
    # A change written through one worker (a live lookup stores the new image): some clients are on the other.
    aws_state.create_ami(region=REGION, image_id="streamed-new")
    response = httpx.get(f"{workers.base}/v3/images/custom/streamed-new", timeout=10)
    assert response.status_code == 200 and response.headers["x-cache"] == "MISS"
    for follower in followers:
        until(lambda follower=follower: any('"imageId":"streamed-new"' in line for line in follower.lines),
              what="the change on every stream")  # fmt: skip

    signalled = time.monotonic()
    workers.process.send_signal(signal.SIGTERM)
    workers.process.wait(timeout=SHUTDOWN_SECONDS + 10)
    exited = time.monotonic() - signalled
    output = workers.output()
    assert workers.process.returncode == 0, output
    assert exited < SHUTDOWN_SECONDS + 2, f"exited {exited:.1f}s after SIGTERM\n{output}"
    for follower in followers:
        follower.thread.join(timeout=10)
        assert follower.error is None and follower.status == 200 and follower.ended, (follower.error, output)
        assert ": shutting down" in follower.lines
    assert output.count("Finished server process") == 2, output
    assert "Traceback" not in output and "did not drain" not in output


def test_the_poller_killed_is_started_again_and_a_worker_polls_on(workers: Server, aws_state: FakeAws) -> None:
    poller = until(lambda: reconciled(workers), what="the poller's first reconcile")
    started = dict(re.findall(r"worker (\d) started \(pid (\d+)\)", workers.output()))
    # Only a new poller's reconcile at start can store it (the next pass is 300 s away, and no events are sent).
    aws_state.create_ami(region=REGION, image_id="after-the-kill")
    killed = time.time()
    os.kill(int(started[poller]), signal.SIGKILL)

    until(lambda: f"worker {poller} (pid {started[poller]}) ended (killed by SIGKILL)" in workers.output(),
          what="the supervisor noticing")  # fmt: skip
    # Whichever asks first, the survivor or the replacement, takes the lease and polls: its own first reconcile.
    until(lambda: workers.output().count(f"reconciled {REGION}:") == 2, what="another worker's reconcile")
    assert workers.output().count("this worker holds the poller lease") == 2

    def replaced_and_one_polls() -> bool:
        # The dead worker's last series stay until its replacement publishes its own (within a second).
        text = scrape(workers)
        replaced = by_worker(text, "process_start_time_seconds").get(poller, 0) > killed - 1
        return replaced and reconciled(workers) is not None

    until(replaced_and_one_polls, what="the replacement's series, and one worker polling")
    response = httpx.get(f"{workers.base}/v3/images/custom/after-the-kill", timeout=10)
    assert response.headers["x-cache"] == "HIT"  # the new poller's reconcile stored it
    output = workers.stop()
    assert workers.process.returncode == 0, output


@pytest.mark.parametrize("count", [1, 2])
def test_statuscache_workers_sets_how_many_processes_serve_runs(env: dict[str, str], count: int) -> None:
    with started({**env, "STATUSCACHE_WORKERS": str(count)}) as server:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        text = scrape(server)
        output = server.stop()
    assert server.process.returncode == 0, output
    if count == 1:
        # One process, as before: no supervisor, no worker label.
        assert children == [] and "worker=" not in text and "statuscache_poller" not in text
    else:
        assert len(children) == 2 and set(by_worker(text, "process_resident_memory_bytes")) == {"1", "2"}


def test_sighup_reloads_the_tokens_file_in_every_worker(env: dict[str, str], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(line("alice", ALICE))
    with started({**env, "STATUSCACHE_API_TOKENS_FILE": str(tokens)}, "--workers", "2") as server:

        def answered(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.get(f"{server.base}/v3/image-states", headers=headers, timeout=10).status_code

        assert answered(BOB) == 401
        tokens.write_text(line("alice", ALICE) + line("bob", BOB))
        server.process.send_signal(signal.SIGHUP)

        def bob_let_in_by_both() -> bool:
            # A connection of its own each time, so that both workers answer: each must have reloaded.
            assert answered(BOB) in (200, 401)
            return set(by_worker(scrape(server), "statuscache_http_requests_total", code="200",
                                 route="/v3/image-states")) == {"1", "2"}  # fmt: skip

        until(bob_let_in_by_both, what="bob's token accepted by both workers")
        assert all(answered(BOB) == 200 for _ in range(10))
        output = server.stop()
    assert server.process.returncode == 0, output
    reloads = re.findall(r"tokens file \S+ reloaded: 2 tokens for 2 callers \[worker=(\d)\]", output)
    assert sorted(reloads) == ["1", "2"], output
