"""Throughput and latency under wrk: the ceiling and the service measured in alternation, round by round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import wrk
from bench.servers import Process

REGION = "us-east-1"
LIST_PATH = f"/v3/images/custom?imageStatus=AVAILABLE&region={REGION}"
PRESIGN_REUSE_SECONDS = 600  # the service's default: the signing window is part of a describe's ETag


def describe_path(image_id: str) -> str:
    return f"/v3/images/custom/{image_id}?region={REGION}"


@dataclass(frozen=True)
class Described:
    """What one GET of each id answered: bodies and ETags, in id order."""

    bodies: list[bytes]
    etags: list[str]


def describe_all(base: str, image_ids: list[str], *, headers: dict[str, str] | None = None) -> Described:
    """GET every id once (this also signs every URL), with `headers` (a token); each must be a cached 200."""
    bodies: list[bytes] = []
    etags: list[str] = []
    with httpx.Client(base_url=base, timeout=30.0, headers=headers) as client:
        for image_id in image_ids:
            response = client.get(describe_path(image_id))
            if response.status_code != 200 or response.headers.get("x-cache") != "HIT":
                raise RuntimeError(
                    f"{image_id}: expected a cached 200, got {response.status_code} "
                    f"{response.headers.get('x-cache')}: {response.text[:200]}"
                )
            bodies.append(response.content)
            etags.append(response.headers["etag"])
    return Described(bodies, etags)


def list_pages(base: str, *, limit: int = 50) -> list[str] | None:
    """The paths of the list endpoint's pages (following nextToken); None when the endpoint does not answer 200."""
    paths = [LIST_PATH]
    with httpx.Client(base_url=base, timeout=30.0) as client:
        while len(paths) <= limit:
            response = client.get(paths[-1])
            if response.status_code != 200:
                return None if len(paths) == 1 else paths[:-1]
            token = response.json().get("nextToken")
            if not token:
                break
            paths.append(str(httpx.URL(LIST_PATH).copy_merge_params({"nextToken": token})))
    return paths


@dataclass(frozen=True)
class Pair:
    ceiling: wrk.WrkResult
    subject: wrk.WrkResult


@dataclass(frozen=True)
class Summary:
    """Medians over rounds, and the median of the per-round ratios to the ceiling run just before."""

    rps: float
    p50_ms: float
    p99_ms: float
    ceiling_rps: float
    ceiling_p50_ms: float
    ceiling_p99_ms: float
    rps_ratio: float
    p50_ratio: float
    p99_ratio: float
    rounds: int


def summarize(pairs: list[Pair]) -> Summary:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    return Summary(
        rps=median([p.subject.rps for p in pairs]),
        p50_ms=median([p.subject.p50_ms for p in pairs]),
        p99_ms=median([p.subject.p99_ms for p in pairs]),
        ceiling_rps=median([p.ceiling.rps for p in pairs]),
        ceiling_p50_ms=median([p.ceiling.p50_ms for p in pairs]),
        ceiling_p99_ms=median([p.ceiling.p99_ms for p in pairs]),
        rps_ratio=median([p.subject.rps / p.ceiling.rps for p in pairs]),
        p50_ratio=median([p.subject.p50_ms / p.ceiling.p50_ms for p in pairs]),
        p99_ratio=median([p.subject.p99_ms / p.ceiling.p99_ms for p in pairs]),
        rounds=len(pairs),
    )


class DescribeEtags:
    """The describe-304 script's ETags. A describe's ETag carries the signing window (PRESIGN_REUSE_SECONDS):
    once it turns over, the ETags in hand answer 200, not 304, so they are taken again, and a round that straddled
    the turn is run again."""

    def __init__(
        self, base: str, image_ids: list[str], *, auth: dict[str, str], script: Path | None, threads: int
    ) -> None:
        self.base, self.image_ids, self.auth, self.script, self.threads = base, image_ids, auth, script, threads
        self.window = -1

    def refresh(self) -> None:
        if self.script is None:
            return
        self.window = int(time.time() // PRESIGN_REUSE_SECONDS)
        etags = describe_all(self.base, self.image_ids, headers=self.auth).etags
        paths = [describe_path(image_id) for image_id in self.image_ids]
        probe = httpx.get(self.base + paths[0], headers=self.auth | {"If-None-Match": etags[0]}, timeout=10)
        if probe.status_code != 304:
            raise RuntimeError(f"If-None-Match with the current ETag answered {probe.status_code}, not 304")
        headers = [self.auth | {"If-None-Match": etag} for etag in etags]
        self.script.write_text(wrk.rotation_script(paths, headers=headers, threads=self.threads))

    def current(self, started: float, ended: float) -> bool:
        """Whether a run from `started` to `ended` (wall clock) was all in the window of the ETags in hand."""
        return {int(started // PRESIGN_REUSE_SECONDS), int(ended // PRESIGN_REUSE_SECONDS)} == {self.window}


@dataclass
class Workload:
    """One figure measured against the service: its wrk script, and a check that may ask for a re-run."""

    name: str
    script: Path
    # Called with the wall-clock start and end of a run; False means the run is void (measure it again).
    valid: Callable[[float, float], bool] | None = None
    # Prepares the next run (e.g. fresh ETags after a signing window turned over).
    refresh: Callable[[], None] | None = None


def run_pair(
    *, ceiling: Process, service: Process, workload: Workload, duration: float, connections: int, threads: int
) -> Pair:
    for _attempt in range(3):
        ceiling_result = wrk.run(
            ceiling.base, script=workload.script, duration=duration, connections=connections, threads=threads
        )
        started = time.time()
        subject = wrk.run(
            service.base, script=workload.script, duration=duration, connections=connections, threads=threads
        )
        ended = time.time()
        service.check_alive()
        if workload.valid is None or workload.valid(started, ended):
            return Pair(ceiling_result, subject)
        if workload.refresh is not None:
            workload.refresh()
    raise RuntimeError(f"{workload.name}: no valid run in three attempts")


def alternate(
    *,
    ceiling: Process,
    service: Process,
    workloads: list[Workload],
    rounds: int,
    duration: float,
    connections: int = 32,
    threads: int = 2,
    progress: Callable[[str], None] = print,
) -> dict[str, list[Pair]]:
    """Rounds of (ceiling, workload) pairs, A B A B ..., so drift of the machine hits both sides alike."""
    pairs: dict[str, list[Pair]] = {workload.name: [] for workload in workloads}
    for round_index in range(rounds):
        for workload in workloads:
            pair = run_pair(
                ceiling=ceiling, service=service, workload=workload, duration=duration,
                connections=connections, threads=threads,
            )
            pairs[workload.name].append(pair)
            progress(
                f"  round {round_index + 1}/{rounds} {workload.name:<16} "
                f"ceiling {pair.ceiling.rps:8.0f} req/s p99 {pair.ceiling.p99_ms:6.2f} ms | "
                f"service {pair.subject.rps:8.0f} req/s p99 {pair.subject.p99_ms:6.2f} ms "
                f"({pair.subject.rps / pair.ceiling.rps:.2f}x)"
            )
    return pairs
