"""deploy/prometheus and deploy/grafana: promtool accepts the scrape config and the rules, the rules' own unit tests
pass, and the dashboard is importable and asks only for series the service exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from tests.conftest import REGION

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "statuscache.json"


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False)


def test_promtool_accepts_the_alert_rules(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


def test_the_alert_rules_unit_tests_pass(promtool: str) -> None:
    tested = run_promtool(promtool, "test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_accepts_the_scrape_config(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_cover_what_an_operator_is_asked_to_watch() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "ImageBuildTakingTooLong", "ImageBuildFailed", "StatuscacheEventLagHigh",
        "StatuscacheReconcileCorrectingOften", "StatuscacheAwsThrottled", "StatuscacheNotificationsLagging",
        "StatuscacheNotificationDeadLetters",
    } <= set(alerts)
    assert all(rule["annotations"]["summary"] and rule["labels"]["severity"] for rule in alerts.values())
    # Image-state series are the same on every replica: each image rule keeps one of them.
    for name in ("ImageBuildTakingTooLong", "ImageBuildFailed"):
        assert "max without (instance)" in alerts[name]["expr"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_dashboard_is_importable() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    assert [item["name"] for item in board["__inputs"]] == ["DS_PROMETHEUS"]
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(panel["title"] for panel in dashboard()["panels"]).lower()
    for wanted in (
        "images by build status over time", "builds in progress and their age", "failed builds with reasons",
        "event lag", "hit ratio", "aws calls saved",
    ):
        assert wanted in titles, wanted


def expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return exprs + [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_every_series_the_rules_and_dashboard_ask_for_is_exposed(
    runtime: Runtime, aws_state: FakeAws, client: httpx.AsyncClient
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="exposed-build")
    aws_state.create_image_stack(region=REGION, image_id="exposed-failed")
    aws_state.set_stack_status(region=REGION, stack_name="exposed-failed", status="CREATE_FAILED")
    await runtime.reconciler.run_once()
    await client.get("/v3/images/custom/exposed-build")
    runtime.metrics.event_lag.observe(0.5)
    runtime.metrics.deliveries[("ci", "dead_letter")] += 1
    runtime.metrics.notify_lag["ci"] = 0.0

    text = (await client.get("/metrics")).text
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    # A few are counters of things that happen later (none yet); their families are declared all the same.
    declared = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.MULTILINE))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    declared_names = {name + suffix for name, kind in declared for suffix in suffixes.get(kind, ("",))}

    asked = set(re.findall(r"\bstatuscache_\w+", " ".join(expressions())))
    assert asked, "the rules and the dashboard use the service's series"
    assert asked <= exposed | declared_names, asked - exposed - declared_names
