"""A real Prometheus (Debian's package) scraping a running `statuscache serve`: PromQL answers with the right counts,
the counts change after events, and every expression of the shipped alert rules and dashboard evaluates."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml

from service.demo.fakeaws import ACCOUNT_ID, FakeAws
from tests.conftest import REGION, free_port
from tests.test_e2e import wait_until_ready

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COUNT_BY_STATUS = "sum by (image_build_status) (statuscache_image_build_status)"


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/ensure-prometheus installs Debian's prometheus (make test runs it)"
    return path


class Prometheus:
    """A Prometheus server of our own on a free port, scraping `target` every second, with the shipped rules."""

    def __init__(self, *, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "statuscache", "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
            ],
        }
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"prometheus exited with {self.process.returncode}"
            try:
                if httpx.get(f"{self.base}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def counts_by_status(prometheus: Prometheus) -> dict[str, int]:
    return {item["metric"]["image_build_status"]: int(float(item["value"][1])) for item in prometheus.query(
        COUNT_BY_STATUS
    )}


def eventually(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {timeout:g}s; last: {last}")


@pytest.fixture
def serve(aws_state: FakeAws, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Callable[[dict[str, Any]], None]]]:
    stacks = {}
    for image_id in ("prom-build-1", "prom-build-2"):
        stacks[image_id] = aws_state.create_image_stack(
            region=REGION, image_id=image_id, imagebuilder_status="BUILDING"
        )
    aws_state.create_image_stack(region=REGION, image_id="prom-failed")
    aws_state.set_stack_status(region=REGION, stack_name="prom-failed", status="ROLLBACK_COMPLETE", reason="bad AMI")
    for index in range(3):
        aws_state.create_ami(region=REGION, image_id=f"prom-done-{index}")
    sqs = boto3.client(
        "sqs", region_name=REGION, endpoint_url=aws_state.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    queue_url = sqs.create_queue(QueueName=f"prom-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    # A subscription, so the notification series the shipped rules use are exposed too.
    topic = boto3.client(
        "sns", region_name=REGION, endpoint_url=aws_state.endpoint_url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_topic(Name="prom-builds")["TopicArn"]
    subscriptions = tmp_path / "subscriptions.toml"
    subscriptions.write_text(f'[[sns]]\nname = "builds"\ntopic_arn = "{topic}"\n')
    port = free_port()
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": aws_state.endpoint_url,
        "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'prom.db'}",
        "STATUSCACHE_REGIONS": REGION,
        "STATUSCACHE_EVENTS_QUEUE_URL": queue_url,
        "STATUSCACHE_RESYNC_SECONDS": "3600",
        "STATUSCACHE_SUBSCRIPTIONS_FILE": str(subscriptions),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def send(event: dict[str, Any]) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))

    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process=process)
        yield f"127.0.0.1:{port}", stacks, send
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stack_event(stack_id: str, status: str) -> dict[str, Any]:
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "CloudFormation Stack Status Change",
        "source": "aws.cloudformation", "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": REGION, "resources": [stack_id],
        "detail": {"stack-id": stack_id, "status-details": {"status": status, "status-reason": "Cancelled"}},
    }


def shipped_expressions() -> list[str]:
    """Every PromQL expression of the alert rules and the dashboard, with Grafana's variables given values."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "statuscache.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    return [expr.replace("$__rate_interval", "1m").replace("$region", ".*") for expr in exprs]


def test_prometheus_counts_images_by_status_and_follows_events(
    serve: tuple[str, dict[str, str], Callable[[dict[str, Any]], None]], tmp_path: Path
) -> None:
    target, stacks, send = serve
    prometheus = Prometheus(target=target, workdir=tmp_path)
    try:
        expected = {
            "BUILD_IN_PROGRESS": 2, "BUILD_FAILED": 1, "BUILD_COMPLETE": 3,
            "DELETE_IN_PROGRESS": 0, "DELETE_FAILED": 0, "DELETE_COMPLETE": 0,
        }
        eventually(lambda: counts_by_status(prometheus) == expected, timeout=20, what=f"counts {expected}")
        up = prometheus.query('up{job="statuscache"}')
        assert [item["value"][1] for item in up] == ["1"]
        reasons = prometheus.query('statuscache_image_failure_info{image_id="prom-failed"}')
        assert [item["metric"]["cloudformation_stack_status_reason"] for item in reasons] == ["bad AMI"]

        send(stack_event(stacks["prom-build-1"], "ROLLBACK_IN_PROGRESS"))
        after = {**expected, "BUILD_IN_PROGRESS": 1, "BUILD_FAILED": 2}
        eventually(lambda: counts_by_status(prometheus) == after, timeout=20, what=f"counts {after}")
        applied = prometheus.query('statuscache_events_total{outcome="applied"}')
        assert [item["value"][1] for item in applied] == ["1"]
        lag = prometheus.query("statuscache_event_lag_seconds_count")
        assert [item["value"][1] for item in lag] == ["1"]

        # Every shipped expression is valid PromQL over these series, and the rules evaluate without error.
        for expr in shipped_expressions():
            prometheus.query(expr)
        assert set(re.findall(r"statuscache_\w+", " ".join(shipped_expressions()))) <= exposed_names(prometheus)
        groups = eventually(
            lambda: [g for g in httpx.get(f"{prometheus.base}/api/v1/rules").json()["data"]["groups"]
                     if all(rule.get("lastEvaluation", "0001").startswith("20") for rule in g["rules"])],
            timeout=10, what="the rules evaluated",
        )
        assert {rule["health"] for group in groups for rule in group["rules"]} == {"ok"}
        firing = {alert["labels"]["alertname"] for alert in httpx.get(f"{prometheus.base}/api/v1/alerts").json()[
            "data"]["alerts"]}
        assert "ImageBuildFailed" in firing
    finally:
        prometheus.stop()


def exposed_names(prometheus: Prometheus) -> set[str]:
    names: list[str] = httpx.get(f"{prometheus.base}/api/v1/label/__name__/values").json()["data"]
    return {name for name in names if name.startswith("statuscache_")}
