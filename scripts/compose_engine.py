"""The Docker engine and Compose `make compose-test` runs on: installed where missing, started where none answers.

Debian's `docker.io` brings the engine; Compose v2 (`docker compose`) is used when the docker client has it,
else Debian's `docker-compose` (v1), installed if missing. A `dockerd` this module starts logs to a
temporary folder and is stopped again by `Engine.stop`; one that was already running is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DAEMON_START_SECONDS = 60.0
DAEMON_STOP_SECONDS = 30.0


class EngineError(RuntimeError):
    """The engine or Compose could not be had; the message says what to do."""


def answers(*, env: Mapping[str, str] | None = None) -> bool:
    """Whether a Docker daemon answers the client."""
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _works(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class _Apt:
    """apt-get, with one `update` before the first install of this run."""

    def __init__(self) -> None:
        self.updated = False

    def install(self, *packages: str) -> None:
        if os.geteuid() != 0:
            raise EngineError(f"{' '.join(packages)} missing and not root: install them (apt-get install ...)")
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        if not self.updated:
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
            self.updated = True
        print(f"compose-test: installing {' '.join(packages)} from Debian's packages", flush=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )


APT = _Apt()


def ensure_packages(*commands: tuple[str, str]) -> None:
    """Install the Debian package of each (command, package) whose command is not on the PATH."""
    missing = sorted({package for command, package in commands if shutil.which(command) is None})
    if missing:
        APT.install(*missing)


def compose_command() -> list[str]:
    """The Compose to run: v2 when the client has it, else v1 (Debian's `docker-compose`, installed if missing).

    Debian has no Compose v2 package; the file is valid for both (the project is named with -p).
    """
    if _works(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        APT.install("docker-compose")
    if not _works(["docker-compose", "version"]):
        raise EngineError("neither `docker compose` (v2) nor `docker-compose` (v1) runs")
    return ["docker-compose"]


def build_env() -> dict[str, str]:
    """The environment for `docker build`: the classic builder when the client has no buildx to drive BuildKit.

    A docker client from 23 on refuses to build without the buildx plugin unless DOCKER_BUILDKIT=0; Debian's
    engine and Compose v1 build with the classic builder anyway.
    """
    env = dict(os.environ)
    if not _works(["docker", "buildx", "version"]):
        env["DOCKER_BUILDKIT"] = "0"
    return env


@dataclass
class Engine:
    """A Docker engine that answers; `started` when this run started its daemon (and so stops it)."""

    compose: list[str]
    started: subprocess.Popen[bytes] | None = None
    log_dir: Path | None = None

    def stop(self, *, keep_log: bool = True) -> None:
        """Stop the daemon this run started (and, with it, the containerd it started); else nothing.

        Its log stays for a failed run to be read, and goes with a passed one."""
        if self.started is None:
            return
        if self.started.poll() is None:
            self.started.send_signal(signal.SIGTERM)
            try:
                self.started.wait(timeout=DAEMON_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.started.kill()
                self.started.wait()
        if keep_log or self.log_dir is None:
            print(f"compose-test: stopped the dockerd it started (its log: {self.log_dir}/dockerd.log)", flush=True)
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            print("compose-test: stopped the dockerd it started", flush=True)


def ensure_engine() -> Engine:
    """Docker's client, engine and a Compose installed; a daemon answering (started here if none did)."""
    ensure_packages(("dockerd", "docker.io"), ("docker", "docker.io"))
    compose = compose_command()
    if answers():
        return Engine(compose=compose)
    log_dir = Path(tempfile.mkdtemp(prefix="statuscache-dockerd-"))
    print(f"compose-test: no Docker daemon answers: starting dockerd (log: {log_dir}/dockerd.log)", flush=True)
    with (log_dir / "dockerd.log").open("wb") as log:
        daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(compose=compose, started=daemon, log_dir=log_dir)
    deadline = time.monotonic() + DAEMON_START_SECONDS
    while not answers():
        if daemon.poll() is not None:
            raise EngineError(f"dockerd exited with {daemon.returncode}; see {log_dir}/dockerd.log")
        if time.monotonic() > deadline:
            engine.stop()
            raise EngineError(f"dockerd did not answer within {DAEMON_START_SECONDS:.0f}s; see {log_dir}/dockerd.log")
        time.sleep(0.5)
    return engine
