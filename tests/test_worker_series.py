"""With serve --workers, a scrape of any worker shows every worker's own series, labelled worker="<n>", merged family
by family; the image states once. A single process's exposition has no such label."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.api.exposition import render
from service.api.worker_series import WorkerSeries, decode, encode, labelled, merged
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.support.workers import Worker
from tests.conftest import REGION

pytestmark = pytest.mark.asyncio


def counter(name: str, value: float, **labels: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, f"{name} help", labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_labelled_families_merge_into_one_family_per_name_in_worker_order() -> None:
    gauge = GaugeMetricFamily("statuscache_stream_clients", "clients", value=1)
    one = labelled([counter("statuscache_events", 3, outcome="applied"), gauge], worker=1)
    two = labelled([counter("statuscache_events", 5, outcome="applied")], worker=2)

    families = merged([one, two])

    assert [family.name for family in families] == ["statuscache_events", "statuscache_stream_clients"]
    assert [(s.labels, s.value) for s in families[0].samples] == [
        ({"outcome": "applied", "worker": "1"}, 3),
        ({"outcome": "applied", "worker": "2"}, 5),
    ]
    text = render(families).decode()
    assert text.count("# TYPE statuscache_events_total counter") == 1


async def test_published_families_read_back_as_they_were() -> None:
    families: list[Metric] = labelled([counter("statuscache_events", 3, outcome="applied")], worker=4)
    again = decode(encode(families))
    assert render(again) == render(families)


async def test_a_scrape_shows_every_workers_series_and_publishes_its_own(tmp_path: Path) -> None:
    values = {1: 1.0, 2: 2.0}
    series = {
        number: WorkerSeries(
            Worker(number, 2, tmp_path), lambda number=number: [counter("statuscache_events", values[number])]
        )
        for number in (1, 2)
    }
    series[2].publish()
    values[2] = 20.0  # not yet published: worker 1's scrape sees what worker 2 published

    seen = samples(render(series[1].scrape()).decode())
    assert seen == {
        ("statuscache_events_total", frozenset({("worker", "1")})): 1.0,
        ("statuscache_events_total", frozenset({("worker", "2")})): 2.0,
    }
    # A scrape of worker 2 publishes what it answers: a scrape of worker 1 right after never shows less.
    assert samples(render(series[2].scrape()).decode())[
        ("statuscache_events_total", frozenset({("worker", "2")}))
    ] == 20.0
    values[1] = 10.0
    assert samples(render(series[1].scrape()).decode())[
        ("statuscache_events_total", frozenset({("worker", "2")}))
    ] == 20.0


async def test_a_single_process_has_no_worker_label(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    assert "worker=" not in text and "statuscache_poller" not in text


async def test_a_workers_scrape_labels_its_series_and_passes_promtool(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path, promtool: str
) -> None:
    aws_state.create_ami(region=REGION, image_id="labelled")
    await runtime.reconciler.run_once()
    runtime.worker = Worker(1, 2, tmp_path)
    other = WorkerSeries(Worker(2, 2, tmp_path), lambda: [counter("statuscache_live_lookup_aws_calls", 7)])
    other.publish()
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
        await http.get("/v3/images/custom/labelled")
        text = (await http.get("/metrics")).text

    found = samples(text)
    # The image states once, unlabelled; each worker's own series labelled.
    assert found[("statuscache_image_info", frozenset({
        ("region", REGION), ("image_id", "labelled"), ("version", "3.9.0"), ("cloudformation_stack_status", ""),
        ("imagebuilder_image_status", ""),
    }))] == 1  # fmt: skip
    assert found[("statuscache_images", frozenset({("region", REGION), ("image_build_status", "BUILD_COMPLETE")}))] == 1
    assert found[("statuscache_live_lookup_aws_calls_total", frozenset({("worker", "1")}))] == 0
    assert found[("statuscache_live_lookup_aws_calls_total", frozenset({("worker", "2")}))] == 7
    assert found[("statuscache_poller", frozenset({("worker", "1")}))] == 0
    hits = [value for (name, labels), value in found.items()
            if name == "statuscache_http_requests_total" and ("cache", "hit") in labels]  # fmt: skip
    assert hits == [1] and all(("worker", "1") in labels for (name, labels) in found if name.startswith("process_"))
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout.decode() + checked.stderr.decode()
