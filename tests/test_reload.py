"""A real `serve`: SIGHUP reloads the tokens file without dropping a connection; protected mode at the command line."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, free_port
from tests.test_e2e import wait_until_ready

pytestmark = pytest.mark.slow

ALICE = "sct_alice_" + "a" * 40
BOB = "sct_bob_" + "b" * 40


def line(name: str, token: str) -> str:
    return f"{name} {hashlib.sha256(token.encode()).hexdigest()}\n"


@pytest.fixture
def serve_env(aws_state: FakeAws, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'reload.db'}",
        "STATUSCACHE_REGIONS": REGION,
        # Everything the process logs, so the test can look for tokens in all of it.
        "STATUSCACHE_LOG_LEVEL": "DEBUG",
        "STATUSCACHE_SSE_HEARTBEAT_SECONDS": "1",
    }
    for name in ("STATUSCACHE_API_TOKENS_FILE", "STATUSCACHE_ALLOW_ANONYMOUS"):
        env.pop(name, None)
    yield env


def get(connection: http.client.HTTPConnection, path: str, token: str) -> int:
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    response.read()
    return response.status


def until(condition: object, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def open_stream(port: int, token: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/v3/image-changes", headers={"Authorization": f"Bearer {token}"})
    stream = connection.getresponse()
    assert stream.status == 200 and stream.readline() == b"retry: 2000\n"
    # The rest of the opening block (the revision it starts after, the comment) up to its blank line.
    opening = [stream.readline() for _ in range(3)]
    assert opening[0].startswith(b"id: ") and opening[1:] == [b": connected\n", b"\n"], opening
    return connection, stream


def test_sighup_reloads_the_tokens_file_without_dropping_connections(
    serve_env: dict[str, str], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(line("alice", ALICE) + line("bob", BOB))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # To a file, not a pipe: at DEBUG the process writes more than a pipe holds while the test is busy.
    output = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--no-poll"],
        env={**serve_env, "STATUSCACHE_API_TOKENS_FILE": str(tokens)},
        stdout=output, stderr=subprocess.STDOUT,
    )
    connections: list[http.client.HTTPConnection] = []
    try:
        wait_until_ready(base, process=process)
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connections.append(kept)
        assert get(kept, "/stats", ALICE) == 200
        kept_socket = kept.sock
        alice_connection, alice_stream = open_stream(port, ALICE)
        bob_connection, bob_stream = open_stream(port, BOB)
        connections += [alice_connection, bob_connection]

        # alice's line leaves the file; the process is told.
        tokens.write_text("# alice rotated out\n" + line("bob", BOB))
        process.send_signal(signal.SIGHUP)
        until(lambda: httpx.get(f"{base}/stats", headers={"Authorization": f"Bearer {ALICE}"}).status_code == 401)

        # The connection opened before the reload is still the same one, and now answers by the new file.
        assert get(kept, "/stats", ALICE) == 401
        assert get(kept, "/stats", BOB) == 200
        assert kept.sock is kept_socket
        # alice's stream, admitted before the reload, ends with her token: a revoked caller is not left
        # reading image documents (and their pre-signed URLs) for as long as her connection lasts.
        try:
            rest = alice_stream.read()
        except http.client.IncompleteRead as cut:  # ended mid-stream, as a dropped stream ends: clients reconnect
            rest = cut.partial
        assert b"id:" not in rest and alice_stream.isclosed()
        connections.append(http.client.HTTPConnection("127.0.0.1", port, timeout=10))
        assert get(connections[-1], "/v3/image-changes", ALICE) == 401  # and reconnecting is refused
        # bob's stream carries on through the reload: heartbeats keep coming.
        seen = b""
        while b": keepalive" not in seen:
            seen += bob_stream.readline()

        # A file that cannot be parsed (a token pasted in) keeps the tokens in force; the process stays up.
        tokens.write_text(f"bob {BOB}\n")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert get(kept, "/stats", BOB) == 200
        assert get(kept, "/stats", ALICE) == 401
        assert kept.sock is kept_socket
        seen = b""
        while b": keepalive" not in seen:
            seen += bob_stream.readline()
        assert process.poll() is None
    finally:
        for connection in connections:
            connection.close()
        process.terminate()
        process.wait(timeout=20)
        output.close()
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert process.returncode == 0, log
    assert "reloaded: 1 tokens for 1 callers" in log
    assert "tokens file not reloaded, the 1 tokens loaded before stay in force" in log
    assert "GET /stats caller=bob" in log and "GET /stats caller=alice" in log
    assert "GET /stats refused: unknown token" in log
    assert "GET /v3/image-changes caller=alice: token revoked, response ended" in log
    # At DEBUG, across a reload that failed on a token pasted into the file: no token anywhere.
    assert ALICE not in log and BOB not in log and BOB[8:24] not in log
    assert "Traceback" not in log


def test_anonymous_on_purpose_starts_beyond_loopback_and_says_so(serve_env: dict[str, str]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "0.0.0.0", "--port", str(port), "--no-poll"],
        env={**serve_env, "STATUSCACHE_ALLOW_ANONYMOUS": "1", "STATUSCACHE_LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process=process)
        # No token needed: anonymous means anonymous.
        assert httpx.get(f"http://127.0.0.1:{port}/stats").status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert "serving anonymously on 0.0.0.0 (STATUSCACHE_ALLOW_ANONYMOUS=1)" in output.decode(errors="replace")


def test_sighup_without_a_tokens_file_keeps_its_usual_meaning(serve_env: dict[str, str]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--no-poll"],
        env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process=process)
        # On loopback without tokens: anonymous, and a hang-up still stops it (a closed terminal).
        assert httpx.get(f"http://127.0.0.1:{port}/stats").status_code == 200
        process.send_signal(signal.SIGHUP)
        assert process.wait(timeout=20) == -signal.SIGHUP
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
