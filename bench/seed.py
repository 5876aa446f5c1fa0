"""Synthetic ParallelCluster-shaped observations, and SQLite caches seeded with them (no AWS involved)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.demo.fakeaws import ACCOUNT_ID, DEFAULT_BUCKET
from service.domain.models import (
    AmiInfo,
    Change,
    ConfigLocation,
    ImagebuilderState,
    Observed,
    Source,
    StackInfo,
)
from service.settings import Settings
from service.store import db
from service.store.cache import Cache

REGION = "us-east-1"
VERSION = "3.9.0"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OSES = ("alinux2", "alinux2023", "ubuntu2204", "rhel8", "rocky9")
FLAVOURS = ("hpc", "gpu", "slurm", "efa", "base")
ROLLBACK_REASON = "The following resource(s) failed to create: [ParallelClusterImage]. Rollback requested by user."
FAILED_BUILD_REASON = "Image build failed: component 'parallelcluster-validate' failed with exit code 1"


@dataclass(frozen=True)
class Synthetic:
    """What one synthetic image is: its id, the path describe takes, and the stack status if any."""

    image_id: str
    path: str  # "ami" or "stack"
    stack_status: str | None = None


def image_ids(count: int, *, prefix: str = "bench") -> list[str]:
    return [
        f"{prefix}-{OSES[i % len(OSES)]}-{FLAVOURS[(i // len(OSES)) % len(FLAVOURS)]}-{i:05d}" for i in range(count)
    ]


def image_dir(image_id: str) -> str:
    suffix = hashlib.sha256(f"{REGION}/{image_id}".encode()).hexdigest()[:16]
    return f"parallelcluster/{VERSION}/images/{image_id.lower()}-{suffix}"


def parallelcluster_tags(image_id: str, index: int) -> tuple[tuple[str, str], ...]:
    """ParallelCluster's tags plus a few of a team's own, as real images carry."""
    directory = image_dir(image_id)
    return (
        ("parallelcluster:image_id", image_id),
        ("parallelcluster:version", VERSION),
        ("parallelcluster:image_name", image_id),
        ("parallelcluster:s3_bucket", DEFAULT_BUCKET),
        ("parallelcluster:s3_image_dir", directory),
        (
            "parallelcluster:build_log",
            f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/imagebuilder/ParallelClusterImage-{image_id}",
        ),
        ("parallelcluster:build_config", f"s3://{DEFAULT_BUCKET}/{directory}/configs/image-config.yaml"),
        ("team", ("hpc-platform", "ml-infra", "research-computing")[index % 3]),
        ("cost-center", f"cc-{1000 + index % 17}"),
    )


def synthetic(count: int, *, prefix: str = "bench") -> list[Synthetic]:
    """70% finished AMIs; the rest build stacks: in progress, complete, and rolled back."""
    stack_statuses = ("CREATE_IN_PROGRESS", "CREATE_COMPLETE", "ROLLBACK_COMPLETE")
    out = []
    for index, image_id in enumerate(image_ids(count, prefix=prefix)):
        if index % 10 < 7:
            out.append(Synthetic(image_id, "ami"))
        else:
            out.append(Synthetic(image_id, "stack", stack_statuses[index % 10 - 7]))
    return out


def config_of(image_id: str) -> ConfigLocation:
    return ConfigLocation(bucket=DEFAULT_BUCKET, key=f"{image_dir(image_id)}/configs/image-config.yaml", available=True)


def stack_of(image_id: str, index: int, *, status: str) -> StackInfo:
    reason = ROLLBACK_REASON if status == "ROLLBACK_COMPLETE" else None
    return StackInfo(
        name=image_id,
        stack_id=f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{image_id}/"
        f"{hashlib.md5(image_id.encode()).hexdigest()[:8]}-1e2b-11ef-9a3c-0a8f3e6b1c2d",
        status=status,
        status_reason=reason,
        creation_time=T0 - timedelta(minutes=index % 600),
        tags=parallelcluster_tags(image_id, index),
    )


def ami_of(image_id: str, index: int) -> AmiInfo:
    tags = tuple(
        (key, value) for key, value in parallelcluster_tags(image_id, index) if key != "parallelcluster:build_config"
    )
    return AmiInfo(
        ami_id=f"ami-{hashlib.sha1(image_id.encode()).hexdigest()[:17]}",
        state="available",
        tags=(*tags, ("parallelcluster:build_status", "available")),
        name=f"{image_id} 2024-05-01T10-{index % 60:02d}-00.000Z",
        description=f"AWS ParallelCluster AMI for {OSES[index % len(OSES)]}, kernel-5.10.217, lustre-2.12.8",
        architecture="x86_64" if index % 4 else "arm64",
        creation_date=(T0 - timedelta(minutes=index % 600)).isoformat().replace("+00:00", ".000Z"),
    )


def imagebuilder_of(image_id: str, *, status: str, reason: str | None = None) -> ImagebuilderState:
    arn = f"arn:aws:imagebuilder:{REGION}:{ACCOUNT_ID}:image/parallelclusterimage-{image_id.lower()}/{VERSION}/1"
    return ImagebuilderState(arn=arn, status=status, reason=reason)


def changes_for(images: list[Synthetic], *, at: datetime = T0) -> list[Change]:
    """One reconcile-shaped change per image, as a first pass over AWS would bring."""
    out = []
    for index, image in enumerate(images):
        seen: Observed[Any] = Observed(at, None)
        if image.path == "ami":
            out.append(
                Change(
                    region=REGION, image_id=image.image_id, source=Source.RECONCILE, observed_at=at,
                    ami=Observed(at, ami_of(image.image_id, index)), stack=seen,
                    config=Observed(at, config_of(image.image_id)),
                )
            )
            continue
        status = image.stack_status or "CREATE_IN_PROGRESS"
        builder = {"CREATE_IN_PROGRESS": ("BUILDING", None), "CREATE_COMPLETE": ("AVAILABLE", None)}.get(
            status, ("FAILED", FAILED_BUILD_REASON)
        )
        out.append(
            Change(
                region=REGION, image_id=image.image_id, source=Source.RECONCILE, observed_at=at,
                stack=Observed(at, stack_of(image.image_id, index, status=status)), ami=seen,
                imagebuilder=Observed(at, imagebuilder_of(image.image_id, status=builder[0], reason=builder[1])),
                config=Observed(at, config_of(image.image_id)),
            )
        )
    return out


def build_lifecycle(images: list[Synthetic], *, steps: int = 5) -> list[Change]:
    """Event-shaped changes: each image's build moves through `steps` states, interleaved across images.

    Step order: stack created (Image Builder PENDING), BUILDING, AVAILABLE, stack CREATE_COMPLETE,
    AMI available. Every change is newer than the one before it for that image, so each one applies.
    """
    plan: list[list[Change]] = [[] for _ in range(steps)]
    for index, image in enumerate(images):
        image_id = image.image_id
        for step in range(steps):
            at = T0 + timedelta(seconds=step * 60 + index / 1000)
            kwargs: dict[str, object] = {}
            if step == 0:
                kwargs = {
                    "stack": Observed(at, stack_of(image_id, index, status="CREATE_IN_PROGRESS")),
                    "imagebuilder": Observed(at, imagebuilder_of(image_id, status="PENDING")),
                    "config": Observed(at, config_of(image_id)),
                }
            elif step in (1, 2):
                status = "BUILDING" if step == 1 else "AVAILABLE"
                kwargs = {"imagebuilder": Observed(at, imagebuilder_of(image_id, status=status))}
            elif step == 3:
                kwargs = {"stack": Observed(at, stack_of(image_id, index, status="CREATE_COMPLETE"))}
            else:
                kwargs = {"ami": Observed(at, ami_of(image_id, index))}
            plan[step % steps].append(
                Change(region=REGION, image_id=image_id, source=Source.EVENT, observed_at=at, happened_at=at,
                       **kwargs)  # type: ignore[arg-type]
            )
    return [change for step_changes in plan for change in step_changes]


async def seed_sqlite(path: Path, images: list[Synthetic]) -> None:
    """A migrated SQLite cache at `path` holding `images`."""
    url = f"sqlite+aiosqlite:///{path}"
    await db.migrate(url)
    engine = db.create_engine(Settings(database_url=url))
    try:
        # Observed just now, as a reconcile pass leaves a cache: answers are the confirmed truth of now (an
        # old observation would make every answer carry X-Cache-Stale: unconfirmed, which no steady cache does).
        cache = Cache(engine)
        now = datetime.now(UTC)
        await cache.apply_many(changes_for(images, at=now))
        # And listed, as that pass leaves it (lists of a region never listed answer 503).
        await cache.listed(region=REGION, at=now)
    finally:
        await engine.dispose()


def seed_sqlite_sync(path: Path, images: list[Synthetic]) -> None:
    asyncio.run(seed_sqlite(path, images))
