"""Processes under test: `python -m service serve` and the ceiling, each on its own port, always stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerError(RuntimeError):
    """A process under test did not start, or died."""


class Process:
    """One server process; its output goes to a log file, shown when it fails to start."""

    def __init__(
        self,
        *,
        name: str,
        command: list[str],
        env: dict[str, str],
        log_dir: Path,
        port: int,
        cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd or REPO, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, *, path: str = "/readyz", timeout: float = 60.0) -> None:
        """Until `path` answers 200 and, for a service that polls, its start-up reconcile is done (ready alone
        only means "can serve what it has")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = httpx.get(self.base + path, timeout=1.0)
                reconcile = response.json().get("reconcile", {}) if path == "/readyz" else {}
                if response.status_code == 200 and (not reconcile.get("polling") or reconcile.get("firstPassDone")):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise ServerError(f"{self.name} not ready within {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def rss_mb(self) -> float:
        """VmRSS of the process, in MB (1,000,000 bytes)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
        raise ServerError(f"no VmRSS for {self.name} ({self.pid})")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(f"{self.name} died with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if isinstance(exc, Exception):
            print(f"--- last lines of {self.name}'s log ({self.log_path.name}) ---\n{self.log_tail()}", file=sys.stderr)


def serve_env(*, database_url: str, aws_endpoint: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STATUSCACHE_", "AWS_")) and key != "BENCH_CEILING_BODY"
    }
    env.update(
        {
            "STATUSCACHE_DATABASE_URL": database_url,
            "STATUSCACHE_REGIONS": "us-east-1",
            "STATUSCACHE_LOG_LEVEL": "WARNING",
            "AWS_ENDPOINT_URL": aws_endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    env.update(extra or {})
    return env


def start_serve(
    *,
    name: str,
    database_url: str,
    aws_endpoint: str,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    poll: bool = False,
    cwd: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Process:
    """`serve` on a free port, ready; `cwd` and a PYTHONPATH in `extra_env` run another source tree."""
    port = free_port()
    process = Process(
        name=name,
        command=[sys.executable, "-m", "service", "serve", *([] if poll else ["--no-poll"]), "--port", str(port)],
        env=serve_env(database_url=database_url, aws_endpoint=aws_endpoint, extra=extra_env),
        log_dir=log_dir,
        port=port,
        cwd=cwd,
        preexec_fn=preexec_fn,
    )
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


def start_ceiling(*, body_path: Path, log_dir: Path, name: str = "ceiling") -> Process:
    """The bare Starlette app on the same uvicorn: one worker, default loop and HTTP implementation, no access log.

    It answers every route with the bytes of `body_path` (a describe answer, or a list page).
    """
    return start_asgi(
        "bench.ceiling:app", env={"BENCH_CEILING_BODY": str(body_path)}, log_dir=log_dir, name=name,
        options=["--lifespan", "on"], ready_path="/healthz",
    )  # fmt: skip


def start_asgi(
    app: str, *, env: dict[str, str], log_dir: Path, name: str, options: list[str], ready_path: str = "/readyz",
    preexec_fn: Callable[[], None] | None = None,
) -> Process:
    """`python -m uvicorn APP` on a free port with uvicorn's `options`, no access log, ready; `env` on top of this
    process's environment without its STATUSCACHE_ and AWS_ variables."""
    port = free_port()
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("STATUSCACHE_", "AWS_"))}
    process = Process(
        name=name,
        command=[
            sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", *options,
        ],
        env=inherited | env,
        log_dir=log_dir,
        port=port,
        preexec_fn=preexec_fn,
    )
    try:
        process.wait_ready(path=ready_path)
    except BaseException:
        process.stop()
        raise
    return process
