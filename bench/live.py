"""The live path against the cache: the same describe answered live (pcluster's calls, against moto) and cached."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import httpx

from bench.load import describe_path
from service.demo.fakeaws import FakeAws

REGION = "us-east-1"


@dataclass(frozen=True)
class PathTiming:
    path: str  # "ami" or "stack"
    answers: int
    live_p50_ms: float
    cached_p50_ms: float
    live_calls_per_answer: float
    cached_calls_per_answer: float

    @property
    def speedup(self) -> float:
        return self.live_p50_ms / self.cached_p50_ms


def create_images(fake: FakeAws, *, per_path: int, prefix: str) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"ami": [], "stack": []}
    for index in range(per_path):
        ami_id = f"{prefix}-ami-{index:03d}"
        fake.create_ami(region=REGION, image_id=ami_id)
        ids["ami"].append(ami_id)
        stack_id = f"{prefix}-stack-{index:03d}"
        fake.create_image_stack(region=REGION, image_id=stack_id, imagebuilder_status="BUILDING")
        ids["stack"].append(stack_id)
    return ids


def _timed_pass(client: httpx.Client, image_ids: list[str], *, expect: str) -> list[float]:
    timings = []
    for image_id in image_ids:
        started = time.perf_counter()
        response = client.get(describe_path(image_id))
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200 or response.headers.get("x-cache") != expect:
            raise RuntimeError(
                f"{image_id}: expected 200 {expect}, got {response.status_code} {response.headers.get('x-cache')}"
            )
    return timings


def live_vs_cached(fake: FakeAws, *, base: str, ids: dict[str, list[str]]) -> list[PathTiming]:
    """Sequential GETs on one keep-alive connection: each id first live (MISS), then again from the cache (HIT)."""
    out = []
    with httpx.Client(base_url=base, timeout=30.0) as client:
        client.get("/healthz")
        for path, image_ids in ids.items():
            fake.reset_calls()
            live = _timed_pass(client, image_ids, expect="MISS")
            live_calls = fake.total_calls()
            fake.reset_calls()
            cached = _timed_pass(client, image_ids, expect="HIT")
            cached_calls = fake.total_calls()
            out.append(
                PathTiming(
                    path=path,
                    answers=len(image_ids),
                    live_p50_ms=statistics.median(live),
                    cached_p50_ms=statistics.median(cached),
                    live_calls_per_answer=live_calls / len(image_ids),
                    cached_calls_per_answer=cached_calls / len(image_ids),
                )
            )
    return out
