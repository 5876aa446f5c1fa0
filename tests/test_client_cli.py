"""The client commands: what `pcluster describe-image` / `list-images` print (key order, indentation, exit
codes), image-history and watch; none of them builds settings, opens a database or needs AWS."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest

from service.__main__ import _parser, main
from service.client import cli
from service.client.shapes import pcluster_describe
from service.demo.fakeaws import FakeAws
from tests.conftest import REGION, LiveService, free_port


@pytest.fixture(autouse=True)
def service_settings_that_would_not_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client commands never build the service's Settings: these would make every service command fail.
    monkeypatch.setenv("STATUSCACHE_PORT", "not-a-port")
    monkeypatch.setenv("STATUSCACHE_DATABASE_URL", "nowhere://")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("STATUSCACHE_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out


@pytest.mark.slow
def test_describe_image_prints_what_pcluster_prints(
    live_service: LiveService, aws_state: FakeAws, capsys: pytest.CaptureFixture[str]
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cli-stack", imagebuilder_status="BUILDING")
    aws_state.create_ami(region=REGION, image_id="cli-ami")
    for image_id in ("cli-stack", "cli-ami"):
        status, out = run(capsys, "describe-image", "--image-id", image_id, "--region", REGION,
                          "--endpoint", live_service.base_url)  # fmt: skip
        api = httpx.get(f"{live_service.base_url}/v3/images/custom/{image_id}").json()
        assert status == 0
        printed = json.loads(out)
        url = api["imageConfiguration"]["url"]
        # The same document (the URL's signature aside), in pcluster's key order, indented as pcluster does.
        assert printed["imageConfiguration"]["url"].split("?")[0] == url.split("?")[0]
        expected = pcluster_describe(api | {"imageConfiguration": printed["imageConfiguration"]})
        assert out == json.dumps(expected, indent=2) + "\n"
        assert list(printed)[:2] == ["imageConfiguration", "imageId"]


def test_errors_print_pclusters_message_and_exit_1(
    live_service: LiveService, aws_state: FakeAws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSCACHE_URL", live_service.base_url)
    status, out = run(capsys, "describe-image", "-i", "cli-missing")
    assert status == 1
    assert out == json.dumps(
        {"message": "No image or stack associated with ParallelCluster image id: cli-missing."}, indent=2
    ) + "\n"
    status, out = run(capsys, "describe-image", "-i", "1-bad")
    assert status == 1
    # pcluster's CLI words (it checks the id before calling anything), not its API's.
    assert json.loads(out) == {"message": "Bad Request: '1-bad' does not match '^[a-zA-Z][a-zA-Z0-9-]+$' - 'image-id'"}
    status, out = run(capsys, "describe-image", "-i", "cli-x", "-r", "mars-1")
    assert (status, json.loads(out)) == (1, {"message": "Bad Request: invalid or unsupported region 'mars-1'"})
    status, out = run(capsys, "describe-image", "-i", "cli-x", "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert status == 1 and "could not be reached" in json.loads(out)["message"]


def test_a_missing_or_unknown_flag_is_argparses_usage_error_as_in_pcluster(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["describe-image"], ["list-images"], ["list-images", "--image-status", "DONE"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_region_comes_from_aws_default_region_as_in_pcluster(
    live_service: LiveService, aws_state: FakeAws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSCACHE_URL", live_service.base_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    aws_state.create_image_stack(region="eu-west-1", image_id="cli-eu")
    status, out = run(capsys, "describe-image", "-i", "cli-eu")
    assert status == 0 and json.loads(out)["region"] == "eu-west-1"


@pytest.mark.slow
def test_list_images_prints_pclusters_page_and_takes_a_query(
    live_service: LiveService, aws_state: FakeAws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSCACHE_URL", live_service.base_url)
    aws_state.create_ami(region=REGION, image_id="cli-listed")
    live_service.run(live_service.app.state.runtime.reconciler.run_pass(region=REGION))
    status, out = run(capsys, "list-images", "--image-status", "AVAILABLE")
    page = json.loads(out)
    assert status == 0 and [image["imageId"] for image in page["images"]] == ["cli-listed"]
    assert list(page["images"][0]) == ["imageId", "imageBuildStatus", "ec2AmiInfo", "region", "version"]
    assert out == json.dumps(page, indent=2) + "\n"
    status, out = run(capsys, "list-images", "--image-status", "AVAILABLE", "--query", "images[0].imageId")
    assert (status, out) == (0, '"cli-listed"\n')
    # An empty result prints nothing, as pcluster's `if ret: print(...)` does.
    status, out = run(capsys, "list-images", "--image-status", "FAILED", "--query", "images[0].imageId")
    assert (status, out) == (0, "")
    status, out = run(capsys, "list-images", "--image-status", "AVAILABLE", "--next-token", "forged")
    assert (status, json.loads(out)) == (1, {"message": "Bad Request: nextToken is not one this service issued"})


@pytest.mark.slow
def test_image_history_is_a_table_or_json(
    live_service: LiveService, aws_state: FakeAws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATUSCACHE_URL", live_service.base_url)
    runtime = live_service.app.state.runtime
    aws_state.create_image_stack(region=REGION, image_id="cli-history")
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    aws_state.set_stack_status(region=REGION, stack_name="cli-history", status="ROLLBACK_COMPLETE", reason="no room")
    live_service.run(runtime.reconciler.run_pass(region=REGION))

    status, table = run(capsys, "image-history", "-i", "cli-history")
    assert status == 0
    lines = table.splitlines()
    assert lines[0] == f"cli-history in {REGION}: 2 transitions"
    assert lines[1].split() == "TIME BUILD STATUS STACK STATUS IMAGE BUILDER AMI SOURCE REASON".split()
    assert lines[2].split()[1:5] == ["BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "BUILDING", "-"]
    assert lines[3].split()[1:3] == ["BUILD_FAILED", "ROLLBACK_COMPLETE"] and lines[3].endswith("no room")
    status, out = run(capsys, "image-history", "-i", "cli-history", "--output", "json")
    document = json.loads(out)
    assert status == 0 and [item["cloudformationStackStatus"] for item in document["transitions"]] == [
        "CREATE_IN_PROGRESS", "ROLLBACK_COMPLETE",
    ]  # fmt: skip


class StopAfter(io.StringIO):
    """stdout for `watch`: Ctrl-C after `lines` lines."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines = lines

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\n") >= self.lines:
            raise KeyboardInterrupt
        return written


@pytest.mark.parametrize("output", ["text", "json"])
@pytest.mark.slow
def test_watch_prints_one_line_per_change(
    live_service: LiveService, aws_state: FakeAws, output: str
) -> None:
    runtime = live_service.app.state.runtime
    aws_state.create_image_stack(region=REGION, image_id="cli-watched")
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    aws_state.delete_stack(region=REGION, stack_name="cli-watched")
    live_service.run(runtime.reconciler.run_pass(region=REGION))
    args = _parser().parse_args(
        ["watch", "-i", "cli-watched", "--last-event-id", "0", "--output", output, "--endpoint", live_service.base_url]
    )
    out = StopAfter(2)
    assert cli.run(args, out=out) == 130
    lines = out.getvalue().splitlines()
    if output == "json":
        events: list[dict[str, Any]] = [json.loads(line) for line in lines]
        assert [event["event"] for event in events] == ["image", "gone"]
        assert events[0]["data"]["cloudformationStackStatus"] == "CREATE_IN_PROGRESS"
        assert events[0]["id"] < events[1]["id"]
    else:
        assert lines[0].split()[1:] == [REGION, "cli-watched", "BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS", "BUILDING"]
        assert lines[1].split()[1:] == [REGION, "cli-watched", "GONE"]
