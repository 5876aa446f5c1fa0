"""GET /metrics: the cache's image states (kube-state-metrics style) and the process's counters, for Prometheus.

The text format is prometheus-client's own (`generate_latest` over custom collectors that read at
scrape time); nothing here holds a prometheus-client metric with a lock, and the hot path only ever
touches the plain ints of service.metrics.

Image states come from the database at scrape time (never from AWS), so every replica exposes the same
series. At 10,000 images that is 90,000 samples, so the rendered lines of each image are remembered by
its row version and a scrape re-renders only the images that changed since the last one (none, when the
fingerprint of the table says nothing did). The counters are this process's own: with several
replicas, each exposes its own; the workers of `serve --workers` each expose every worker's, labelled by worker
(service.api.worker_series).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from service.api.compression import accepts_gzip
from service.api.state import AppState
from service.api.worker_series import WorkerSeries
from service.domain.status import BUILD_STATUS_BY_STACK_STATUS
from service.metrics import (
    LOOKUP_BUDGET,
    LOOKUP_COALESCED,
    LOOKUP_ERROR,
    LOOKUP_NOT_FOUND,
    LOOKUP_OK,
    LOOKUP_THROTTLED,
    Histogram,
    Metrics,
)
from service.runtime import Runtime
from service.store import states
from service.support.clock import as_utc
from service.support.singleflight import SingleFlight

PATH = "/metrics"
# Outcomes exposed as 0 before the first one happens, so a rate() over them has data from the start.
LOOKUP_OUTCOMES = (LOOKUP_OK, LOOKUP_NOT_FOUND, LOOKUP_THROTTLED, LOOKUP_ERROR, LOOKUP_BUDGET, LOOKUP_COALESCED)
EVENT_OUTCOMES = ("received", "applied", "duplicates", "stale", "poison", "refreshed")
# The six imageBuildStatus values, in pcluster's order of a build's life.
BUILD_STATUSES = tuple(dict.fromkeys(BUILD_STATUS_BY_STACK_STATUS.values()))
# Rendering yields to the event loop after this many images, so a first scrape of a large cache does not
# hold up the requests being served meanwhile.
RENDER_CHUNK = 200
# The text is repetitive enough that the fastest level compresses it ~30x; the image-state part is compressed
# once per change of the cache, the small rest on every scrape (GzipPrefix).
GZIP_LEVEL = 1

IMAGE_FAMILIES = (
    (
        "statuscache_image_build_status",
        "The image's build status (imageBuildStatus): 1 for the current one, 0 for the other five.",
        ("region", "image_id", "image_build_status"),
    ),
    (
        "statuscache_image_info",
        "Information about the image, always 1: ParallelCluster version, CloudFormation and Image Builder statuses.",
        ("region", "image_id", "version", "cloudformation_stack_status", "imagebuilder_image_status"),
    ),
    (
        "statuscache_image_created_timestamp_seconds",
        "When the image was created (the AMI's creation time, else its build stack's), in Unix seconds.",
        ("region", "image_id"),
    ),
    (
        "statuscache_image_status_since_timestamp_seconds",
        "When the image's current build status began, in Unix seconds.",
        ("region", "image_id"),
    ),
    (
        "statuscache_image_failure_info",
        "Why a failed image failed (its CloudFormation and Image Builder reasons), always 1; failed images only.",
        ("region", "image_id", "image_build_status", "cloudformation_stack_status_reason",
         "imagebuilder_image_status_reason"),
    ),
)
FAILED_STATUSES = ("BUILD_FAILED", "DELETE_FAILED")
# Reasons are free text: long ones are cut (a label value is stored with every sample).
REASON_MAX_CHARS = 300


def image_families(images: Iterable[states.ImageState]) -> list[GaugeMetricFamily]:
    """The per-image families for `images` (existing ones): what the memo renders, image by image."""
    families = [GaugeMetricFamily(name, documentation, labels=labels) for name, documentation, labels in IMAGE_FAMILIES]
    build, info, created, since, failure = families
    for image in images:
        key = [image.region, image.image_id]
        for status in BUILD_STATUSES:
            build.add_metric([*key, status], 1.0 if image.build_status == status else 0.0)
        info.add_metric(
            [*key, image.pcluster_version or "", image.stack_status or "", image.imagebuilder_status or ""], 1.0
        )
        if image.created:
            try:
                created.add_metric(key, as_utc(image.created).timestamp())
            except ValueError:
                pass  # not a time: the series is left out rather than the scrape failing
        if image.status_since is not None:
            since.add_metric(key, image.status_since.timestamp())
        if image.build_status in FAILED_STATUSES:
            failure.add_metric(
                [
                    *key, image.build_status,
                    (image.stack_status_reason or "")[:REASON_MAX_CHARS],
                    (image.imagebuilder_status_reason or "")[:REASON_MAX_CHARS],
                ],
                1.0,
            )
    return families


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(families: Sequence[Metric]) -> bytes:
    return generate_latest(_Families(families))


def split_families(text: bytes) -> list[bytes]:
    """generate_latest's output for N families -> N blocks of sample lines (HELP and TYPE lines dropped)."""
    blocks: list[list[bytes]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(b"# HELP "):
            blocks.append([])
        elif not line.startswith(b"#"):
            blocks[-1].append(line)
    return [b"".join(block) for block in blocks]


# The HELP and TYPE lines of each image family, written once.
IMAGE_HEADERS = [
    b"".join(line for line in render([family]).splitlines(keepends=True) if line.startswith(b"#"))
    for family in image_families(())
]


class GzipPrefix:
    """A gzip stream begun with `text`, to be finished with different endings: the large, rarely changing
    part of a body is compressed once, and each answer only compresses its own small tail.

    The compressor is flushed (not finished) after `text` and never used again; each ending works on a
    copy of it, so the result is one ordinary gzip stream (header, deflate data, CRC of the whole).
    """

    def __init__(self, text: bytes) -> None:
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self.prefix = self._compressor.compress(text) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, tail: bytes) -> bytes:
        compressor = self._compressor.copy()
        return self.prefix + compressor.compress(tail) + compressor.flush()


@dataclass(frozen=True)
class Rendered:
    fingerprint: states.Fingerprint
    # The text in pieces (the remembered lines of each image, shared, not copied): joined only for a client that
    # does not take gzip, as Prometheus does. At 10,000 images the text is ~12 MB; kept whole, it would be
    # ~12 MB more memory for nothing.
    parts: list[bytes]
    gzip: GzipPrefix
    # Images per region and build status, for the small summary gauge.
    counts: dict[tuple[str, str], int]

    def text(self) -> bytes:
        return b"".join(self.parts)


class ImageStateSeries:
    """The image-state part of the exposition, re-rendered only where the cache changed."""

    def __init__(self) -> None:
        # (region, image id) -> (row version, its sample lines per family).
        self._lines: dict[tuple[str, str], tuple[int, list[bytes]]] = {}
        self._rendered: Rendered | None = None
        self._flight: SingleFlight[str, Rendered] = SingleFlight()
        self.last_scrape_seconds = 0.0
        self.last_rendered_images = 0

    async def current(self, runtime: Runtime) -> Rendered:
        return await self._flight.run("render", lambda: self._current(runtime))

    async def _current(self, runtime: Runtime) -> Rendered:
        started = time.perf_counter()
        regions = runtime.settings.regions
        if self._rendered is not None:
            if await states.fingerprint(runtime.engine, regions=regions) == self._rendered.fingerprint:
                self.last_scrape_seconds = time.perf_counter() - started
                return self._rendered
        snapshot = await states.read(runtime.engine, regions=regions)
        rendered = await self._render(snapshot)
        self._rendered = rendered
        self.last_scrape_seconds = time.perf_counter() - started
        return rendered

    async def _render(self, snapshot: states.States) -> Rendered:
        previous = self._lines
        lines: dict[tuple[str, str], tuple[int, list[bytes]]] = {}
        counts: dict[tuple[str, str], int] = {}
        fresh = 0
        for image in snapshot.existing:
            key = (image.region, image.image_id)
            status = image.build_status or ""
            counts[(image.region, status)] = counts.get((image.region, status), 0) + 1
            known = previous.get(key)
            if known is not None and known[0] == image.version:
                lines[key] = known
                continue
            lines[key] = (image.version, split_families(render(image_families([image]))))
            fresh += 1
            if fresh % RENDER_CHUNK == 0:
                await asyncio.sleep(0)
        self._lines = lines
        self.last_rendered_images = fresh
        parts: list[bytes] = []
        for index, header in enumerate(IMAGE_HEADERS):
            parts.append(header)
            parts.extend(entry[1][index] for entry in lines.values())
        # Off the event loop: zlib lets go of the GIL while it compresses.
        compressed = await asyncio.to_thread(GzipPrefix, b"".join(parts))
        return Rendered(snapshot.fingerprint, parts, compressed, counts)


def _counter(
    name: str, documentation: str, labels: Sequence[str], values: Iterable[tuple[Sequence[str], float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for label_values, value in values:
        family.add_metric(list(label_values), value)
    return family


def _by_outcome(name: str, documentation: str, counts: Counter[str], *, always: Iterable[str]) -> CounterMetricFamily:
    """A counter by outcome; the outcomes of `always` are exposed as 0 before they first happen."""
    return _counter(
        name, documentation, ("outcome",), [((outcome,), counts[outcome]) for outcome in sorted({*always, *counts})]
    )


def _histogram(family: HistogramMetricFamily, labels: Sequence[str], histogram: Histogram) -> None:
    buckets = [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(list(labels), buckets, histogram.sum)


def images_summary(runtime: Runtime, counts: dict[tuple[str, str], int]) -> GaugeMetricFamily:
    """Images per region and build status: the database's, the same in every process."""
    summary = GaugeMetricFamily(
        "statuscache_images", "Images per region and build status (a small gauge for panels).",
        labels=["region", "image_build_status"],
    )
    for region in runtime.settings.regions:
        for status in BUILD_STATUSES:
            summary.add_metric([region, status], counts.get((region, status), 0))
    return summary


def service_families(
    metrics: Metrics, *, runtime: Runtime, counts: dict[tuple[str, str], int], scrape_seconds: float
) -> Iterator[Metric]:
    """The images summary, then the process's counters (service.metrics) and gauges, as metric families."""
    yield images_summary(runtime, counts)
    yield from own_families(metrics, runtime=runtime, scrape_seconds=scrape_seconds)


def own_families(metrics: Metrics, *, runtime: Runtime, scrape_seconds: float) -> Iterator[Metric]:
    """This process's own counters (service.metrics) and gauges, as metric families."""
    requests = sorted(metrics.http_requests.items())
    yield _counter(
        "statuscache_http_requests",
        "HTTP requests by route (path template), status code and cache outcome (hit, miss, 304, none).",
        ("route", "code", "cache"),
        [((route, str(code), cache), histogram.count) for (route, code, cache), histogram in requests],
    )
    by_route: dict[str, Histogram] = {}
    for (route, _, _), histogram in requests:
        by_route.setdefault(route, Histogram(histogram.buckets)).add(histogram)
    latency = HistogramMetricFamily(
        "statuscache_http_request_duration_seconds", "Time to answer an HTTP request, by route.", labels=["route"]
    )
    for route, histogram in by_route.items():
        _histogram(latency, [route], histogram)
    yield latency

    yield _counter(
        "statuscache_aws_calls", "AWS API calls by service, operation and outcome (after botocore's retries).",
        ("service", "operation", "outcome"),
        [((*name.split(".", 1), outcome), n) for (name, outcome), n in sorted(metrics.aws_calls.items())],
    )
    yield _by_outcome(
        "statuscache_live_lookups",
        "Describes the cache could not answer, by outcome: ok, not_found (404), throttled, error, budget (refused "
        "by this process's live-lookup budget, no AWS call), coalesced (joined a lookup in flight).",
        metrics.lookups, always=LOOKUP_OUTCOMES,
    )
    yield _counter(
        "statuscache_live_lookup_aws_calls",
        "AWS calls made by live lookups: per lookup, what a cached answer saves.", (),
        [((), metrics.lookup_aws_calls)],
    )
    yield _by_outcome(
        "statuscache_events",
        "Queue messages and events by what became of them: received, applied, duplicates, stale (news the cache "
        "already had), poison, ignored, refreshed, deleted, ...",
        metrics.events, always=EVENT_OUTCOMES,
    )
    lag = HistogramMetricFamily(
        "statuscache_event_lag_seconds", "From an event's time (EventBridge's) to its change being committed here."
    )
    _histogram(lag, [], metrics.event_lag)
    yield lag
    yield _counter(
        "statuscache_targeted_refreshes", "AWS look-ups of one image that an event could not place.", (),
        [((), metrics.targeted_refreshes)],
    )

    yield _counter(
        "statuscache_reconcile_passes", "Reconcile passes over a region by this process, by outcome (ok, error).",
        ("region", "outcome"), sorted(metrics.reconcile_region_passes.items()),
    )
    duration = HistogramMetricFamily(
        "statuscache_reconcile_duration_seconds", "Wall time of a reconcile pass, by region.", labels=["region"]
    )
    for region, histogram in sorted(metrics.reconcile_seconds.items()):
        _histogram(duration, [region], histogram)
    yield duration
    yield _counter(
        "statuscache_reconcile_aws_calls", "AWS calls made by reconcile passes, by region.", ("region",),
        [((region,), n) for region, n in sorted(metrics.reconcile_aws_calls.items())],
    )
    yield _counter(
        "statuscache_reconcile_corrections",
        "Status changes a reconcile pass found that no event had brought (events being lost), by region.",
        ("region",), [((region,), n) for region, n in sorted(metrics.reconcile_corrected.items())],
    )
    yield _counter(
        "statuscache_notify_deliveries",
        "Notification deliveries by subscription and outcome (delivered; failed: retried later; dead_letter: given "
        "up; disabled: the receiver said 410).",
        ("subscription", "outcome"), sorted(metrics.deliveries.items()),
    )
    behind = GaugeMetricFamily(
        "statuscache_notify_lag_seconds",
        "Seconds since the oldest change a subscription has not handled yet was observed (0: caught up); only on "
        "the replica delivering it.",
        labels=["subscription"],
    )
    for name, seconds in sorted(metrics.notify_lag.items()):
        behind.add_metric([name], seconds)
    yield behind
    lease = GaugeMetricFamily(
        "statuscache_reconcile_lease_held", "1 where this process holds the region's reconcile lease.",
        labels=["region"],
    )
    for region in runtime.settings.regions:
        lease.add_metric([region], 1.0 if region in metrics.reconcile_lease else 0.0)
    yield lease

    yield GaugeMetricFamily(
        "statuscache_stream_clients", "Change-stream (/v3/image-changes) clients connected to this process.",
        value=metrics.stream_clients,
    )
    pool = runtime.engine.pool
    checked_out = getattr(pool, "checkedout", None)
    size = getattr(pool, "size", None)
    if callable(checked_out):
        yield GaugeMetricFamily(
            "statuscache_db_pool_connections_in_use", "Database connections checked out of the pool now.",
            value=checked_out(),
        )
    if callable(size):
        yield GaugeMetricFamily(
            "statuscache_db_pool_size", "The database pool's size (connections kept open).", value=size()
        )
    yield GaugeMetricFamily(
        "statuscache_scrape_image_states_seconds",
        "How long this scrape took to read (and where the cache changed, render) the image states.",
        value=scrape_seconds,
    )


class _ServiceCollector(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def poller_family(metrics: Metrics) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "statuscache_poller",
        "1 on the worker of serve --workers that holds the poller lease and does the background work (reconciler, "
        "event consumer, rechecker, retention, evidence capture, notifications).",
        value=1.0 if metrics.poller_lease else 0.0,
    )


class MetricsEndpoint:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self.images = ImageStateSeries()
        # The standard process_* series (CPU, memory, open files), read from /proc at scrape time.
        self._process = ProcessCollector(registry=None)
        # With `serve --workers`: this worker's series, published for the others, and theirs merged into a scrape.
        self._workers: WorkerSeries | None = None

    def worker_series(self, runtime: Runtime) -> WorkerSeries | None:
        """With `serve --workers`, this worker's series (which the lifespan publishes, service.api.app)."""
        if runtime.worker is None:
            return None
        if self._workers is None:

            def families() -> list[Metric]:
                own = own_families(runtime.metrics, runtime=runtime, scrape_seconds=self.images.last_scrape_seconds)
                return [*own, poller_family(runtime.metrics), *self._process.collect()]

            self._workers = WorkerSeries(runtime.worker, families)
        return self._workers

    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        rendered = await self.images.current(runtime)
        workers = self.worker_series(runtime)
        if workers is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(
                _ServiceCollector(
                    service_families(
                        runtime.metrics, runtime=runtime, counts=rendered.counts,
                        scrape_seconds=self.images.last_scrape_seconds,
                    )
                )
            )
            registry.register(self._process)
            rest = generate_latest(registry)
        else:
            rest = render([images_summary(runtime, rendered.counts), *workers.scrape()])
        headers = {"Cache-Control": "no-store"}
        if accepts_gzip(request.headers.get("accept-encoding")):
            body = rendered.gzip.finish(rest)
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4, headers=headers)
        return Response(
            b"".join([*rendered.parts, rest]), media_type=CONTENT_TYPE_PLAIN_0_0_4, headers=headers
        )
