"""With `serve --workers N`: every worker's own series in every scrape, each labelled worker="<n>".

A scrape lands on one worker. Each worker publishes its own families (its counters and gauges, service.metrics, and
prometheus-client's process_*) to the directory the workers share: one file, replaced whole, every PUBLISH_SECONDS
and whenever it answers a scrape. The scraped worker answers its own families, current, and the others' last
published, merged family by family (the text format wants each family's samples together, under one HELP and TYPE).
So another worker's series are at most PUBLISH_SECONDS old, and never go back: what one scrape answered for a worker
is what that worker had published by then, which the next scrape, wherever it lands, reads or a newer one.

Labelled, not summed: prometheus-client's multiprocess mode sums across processes, but only for its own metric
objects, each updated under a lock, where these are plain ints on the hot path read at scrape time. With the label,
`sum without (worker)` is the host's figure, and a worker started again after a crash is a counter reset of its own
series, which rate() and increase() handle. A worker that died keeps its last series until its replacement (same
number) publishes. The image states come from the database, the same in every worker: they appear once, unlabelled.

The files are a few kilobytes, written and read on the event loop: less time than a thread hop would cost.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import orjson
from prometheus_client.core import Metric

from service.support.loops import Backoff, Loop
from service.support.workers import Worker

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 1.0
LABEL = "worker"
PREFIX = "metrics-"


def labelled(families: Iterable[Metric], *, worker: int) -> list[Metric]:
    """`families` with worker="<worker>" on every sample. Pure."""
    out: list[Metric] = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            copy.add_sample(sample.name, {**sample.labels, LABEL: str(worker)}, sample.value)
        out.append(copy)
    return out


def merged(groups: Sequence[Sequence[Metric]]) -> list[Metric]:
    """One family per name, its samples from every group in turn, in the order names first appear. Pure."""
    by_name: dict[str, Metric] = {}
    for families in groups:
        for family in families:
            into = by_name.get(family.name)
            if into is None:
                into = by_name[family.name] = Metric(family.name, family.documentation, family.type)
            into.samples.extend(family.samples)
    return list(by_name.values())


def encode(families: Iterable[Metric]) -> bytes:
    return orjson.dumps(
        [
            [family.name, family.type, family.documentation, [[s.name, s.labels, s.value] for s in family.samples]]
            for family in families
        ]
    )


def decode(data: bytes) -> list[Metric]:
    families: list[Metric] = []
    for name, kind, documentation, samples in orjson.loads(data):
        family = Metric(name, documentation, kind)
        for sample_name, labels, value in samples:
            # JSON has no NaN: orjson writes null for it.
            family.add_sample(sample_name, labels, math.nan if value is None else value)
        families.append(family)
    return families


class WorkerSeries:
    """This worker's families (`families()`, unlabelled, read when called), published and merged with the others'."""

    def __init__(self, worker: Worker, families: Callable[[], Sequence[Metric]]) -> None:
        self.worker = worker
        self._families = families
        self._path = worker.directory / f"{PREFIX}{worker.number}.json"

    def publish(self) -> list[Metric]:
        """This worker's labelled families, now, as the others will read them; returned."""
        own = labelled(self._families(), worker=self.worker.number)
        _replace(self._path, encode(own))
        return own

    def scrape(self) -> list[Metric]:
        """Every worker's labelled families: this one's now (published first), the others' as last published."""
        groups: dict[int, Sequence[Metric]] = {self.worker.number: self.publish()}
        for number, path in _published(self.worker.directory):
            if number == self.worker.number:
                continue
            try:
                groups[number] = decode(path.read_bytes())
            except FileNotFoundError:
                continue  # its directory is being removed: the supervisor is stopping
            except ValueError:
                log.warning("unreadable series of worker %d in %s: left out of this scrape", number, path)
        return merged([groups[number] for number in sorted(groups)])

    def loop(self) -> Loop:
        async def step() -> float:
            self.publish()
            return PUBLISH_SECONDS

        return Loop(
            name="series publisher", step=step, backoff=Backoff(PUBLISH_SECONDS, PUBLISH_SECONDS),
            detail=f"worker {self.worker.number}'s series for the others' scrapes, every {PUBLISH_SECONDS:g}s",
        )  # fmt: skip


def _replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _published(directory: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    for path in directory.glob(f"{PREFIX}*.json"):
        number = path.stem.removeprefix(PREFIX)
        if number.isdigit():
            found.append((int(number), path))
    return found
