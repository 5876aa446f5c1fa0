"""The subscriptions file: what it accepts, and every refusal in one line naming the file, the entry and the field."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from service.domain.subscriptions import (
    Filters,
    Refusal,
    Sns,
    SsmParameter,
    Webhook,
    is_forbidden_address,
    is_news,
    parse,
    secret_key,
)
from service.errors import ConfigurationError
from service.notify.config import SubscriptionsFile, load
from tests.test_changes import T

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
ISSUE_FILE = """
[[webhook]]
name = "ci"                                  # unique across the file
url = "https://ci.example.com/hooks/images"
secret_file = "/run/secrets/ci-webhook"      # holds whsec_<base64>, at least 24 random bytes
statuses = ["BUILD_COMPLETE", "BUILD_FAILED"] # imageBuildStatus values; absent = every transition
image_ids = ["prod-*"]                        # glob patterns; absent = every image
regions = ["us-east-1"]                       # absent = every served region

[[sns]]
name = "builds"
topic_arn = "arn:aws:sns:us-east-1:123456789012:image-builds"
statuses = ["BUILD_COMPLETE", "BUILD_FAILED"]

[[ssm_parameter]]
name = "latest-alinux2"
image_ids = ["alinux2-*"]
parameter = "/parallelcluster/images/alinux2/latest"
"""


def parsed(text: str, *, secret: str = SECRET, addresses: tuple[str, ...] = ("203.0.113.7",)) -> object:
    def read_secret(path: str) -> str:
        if path == "/missing":
            raise FileNotFoundError(2, "No such file or directory")
        return secret

    return parse(
        text, source="subs.toml", served_regions=("us-east-1", "eu-west-1"), read_secret=read_secret,
        resolve=lambda host: list(addresses),
    )  # fmt: skip


def test_the_issues_file_is_accepted_as_written() -> None:
    found = parsed(ISSUE_FILE)
    ci, builds, latest = found.by_name.values()  # type: ignore[attr-defined]
    assert isinstance(ci, Webhook) and ci.secret == b"k" * 32 and ci.filters.image_ids == ("prod-*",)
    assert isinstance(builds, Sns) and builds.filters.statuses == {"BUILD_COMPLETE", "BUILD_FAILED"}
    assert isinstance(latest, SsmParameter) and latest.filters.statuses == {"BUILD_COMPLETE"}
    assert "k" * 8 not in repr(ci) and SECRET not in repr(found)


WEBHOOK = 'name = "ci"\nurl = "https://ci.example.com/h"\nsecret_file = "/s"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[webhook]]\n" + WEBHOOK + "colour = 'red'\n", "[[webhook]] #1 ('ci'), colour: unknown key"),
        ("[[webhooks]]\nname = 'x'\n", "unknown table 'webhooks'"),
        ("[[webhook]]\nname = 'ci'\nsecret_file = '/s'\n", "[[webhook]] #1 ('ci'), url: missing"),
        ("[[webhook]]\n" + WEBHOOK.replace("https://ci.example.com/h", "ftp://x/y"), "url: expected an http"),
        ("[[webhook]]\n" + WEBHOOK.replace("https://ci.example.com/h", "https://u:p@x/y"), "url: credentials"),
        ("[[webhook]]\n" + WEBHOOK.replace("ci.example.com", "169.254.169.254"), "url: 169.254.169.254 is a link"),
        ("[[webhook]]\n" + WEBHOOK.replace("ci.example.com", "[fd00:ec2::254]"), "url: fd00:ec2::254 is a link"),
        ("[[webhook]]\n" + WEBHOOK.replace("/s", "/missing"), "secret_file: cannot read /missing"),
        ("[[webhook]]\n" + WEBHOOK + "statuses = ['DONE']\n", "statuses: 'DONE' is not an imageBuildStatus"),
        ("[[webhook]]\n" + WEBHOOK + "statuses = []\n", "statuses: expected a non-empty array"),
        ("[[webhook]]\n" + WEBHOOK + "regions = ['ap-south-1']\n", "regions: 'ap-south-1' is not a region this"),
        ("[[webhook]]\n" + WEBHOOK + "image_ids = ['a b']\n", "image_ids: 'a b' is not a glob"),
        ("[[webhook]]\n" + WEBHOOK + "[[webhook]]\n" + WEBHOOK, "[[webhook]] #2 ('ci'), name: another"),
        ("[[webhook]]\n" + WEBHOOK + "[[sns]]\nname='ci'\ntopic_arn='arn:aws:sns:us-east-1:123456789012:t'\n",
         "[[sns]] #1 ('ci'), name: another"),
        ("[[webhook]]\n" + WEBHOOK.replace('"ci"', '"c i"'), "[[webhook]] #1, name: 1 to 64"),
        ("[[sns]]\nname = 'b'\ntopic_arn = 'arn:aws:sqs:us-east-1:123456789012:t'\n", "[[sns]] #1 ('b'), topic_arn"),
        ("[[sns]]\nname = 'b'\ntopic_arn = 'arn:aws:sns:us-east-1:1234:t'\n", "topic_arn: not an SNS topic ARN"),
        ("[[ssm_parameter]]\nname = 'p'\nparameter = 'a b'\n", "[[ssm_parameter]] #1 ('p'), parameter: not an SSM"),
        ("[[ssm_parameter]]\nname = 'p'\nparameter = '/aws/x'\n", "parameter: names beginning with aws"),
        ("[[ssm_parameter]]\nname = 'p'\nparameter = '/x'\nstatuses = ['BUILD_FAILED']\n", "statuses: unknown key"),
        ("[[webhook]\n", "not valid TOML"),
        ("webhook = 3\n", "webhook must be an array of tables"),
    ],
)
def test_every_refusal_names_the_file_the_entry_and_the_field(text: str, expected: str) -> None:
    with pytest.raises(Refusal) as refused:
        parsed(text)
    message = str(refused.value)
    assert message.startswith("subs.toml: ") and expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "k" * 40, SECRET[:-16], "whsec_" + base64.b64encode(b"k" * 23).decode(), "whsec_!!!notbase64"],
)
def test_a_missing_or_weak_secret_is_refused_without_showing_it(secret: str) -> None:
    with pytest.raises(Refusal) as refused:
        parsed("[[webhook]]\n" + WEBHOOK, secret=secret)
    assert "secret_file: /s must hold whsec_" in str(refused.value)
    assert len(secret) < 8 or secret not in str(refused.value)


def test_a_host_resolving_to_instance_metadata_is_refused() -> None:
    with pytest.raises(Refusal, match=r"url: ci\.example\.com is a link-local"):
        parsed("[[webhook]]\n" + WEBHOOK, addresses=("10.0.0.1", "169.254.169.254"))
    with pytest.raises(Refusal, match="is a link-local"):
        parsed("[[webhook]]\n" + WEBHOOK, addresses=("fd00:ec2::254",))


def test_secrets_decode_with_or_without_padding() -> None:
    unpadded = SECRET.rstrip("=")
    assert secret_key(unpadded) == secret_key(SECRET) == b"k" * 32


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [("169.254.169.254", True), ("169.254.0.1", True), ("fd00:ec2::254", True), ("fe80::1", True),
     ("::ffff:169.254.169.254", True), ("10.0.0.1", False), ("127.0.0.1", False), ("ci.example.com", False)],
)  # fmt: skip
def test_forbidden_addresses(address: str, forbidden: bool) -> None:
    assert is_forbidden_address(address) is forbidden


@pytest.mark.parametrize(
    ("filters", "region", "image_id", "status", "previous", "expected"),
    [
        (Filters(), "us-east-1", "any", "BUILD_IN_PROGRESS", None, True),
        (Filters(regions=frozenset({"eu-west-1"})), "us-east-1", "any", "BUILD_COMPLETE", None, False),
        (Filters(image_ids=("prod-*",)), "us-east-1", "prod-1", "BUILD_COMPLETE", None, True),
        (Filters(image_ids=("prod-*",)), "us-east-1", "dev-1", "BUILD_COMPLETE", None, False),
        (Filters(statuses=frozenset({"BUILD_COMPLETE"})), "us-east-1", "a", "BUILD_COMPLETE", "BUILD_IN_PROGRESS",
         True),
        # An AMI's state moving under a BUILD_COMPLETE image is not another BUILD_COMPLETE.
        (Filters(statuses=frozenset({"BUILD_COMPLETE"})), "us-east-1", "a", "BUILD_COMPLETE", "BUILD_COMPLETE", False),
        (Filters(statuses=frozenset({"BUILD_COMPLETE"})), "us-east-1", "a", "BUILD_FAILED", "BUILD_IN_PROGRESS", False),
        (Filters(statuses=frozenset({"GONE"})), "us-east-1", "a", "GONE", "BUILD_COMPLETE", True),
    ],
)  # fmt: skip
def test_filters(
    filters: Filters, region: str, image_id: str, status: str, previous: str | None, expected: bool
) -> None:
    assert filters.matches(region=region, image_id=image_id, status=status, previous=previous) is expected


@pytest.mark.parametrize(
    ("previous_exists", "created_minutes", "expected"),
    [(True, -60, True), (False, -60, False), (False, 5, True), (False, None, False)],
)
def test_filling_the_cache_is_not_news(previous_exists: bool, created_minutes: int | None, expected: bool) -> None:
    from datetime import timedelta

    created = None if created_minutes is None else T + timedelta(minutes=created_minutes)
    assert is_news(previous_exists=previous_exists, created=created, subscribed_at=T) is expected


def test_the_loader_names_the_variable_and_a_reload_keeps_the_old_set(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    path = tmp_path / "subs.toml"
    path.write_text(f'[[webhook]]\nname = "ci"\nurl = "http://127.0.0.1:9/h"\nsecret_file = "{secret}"\n')
    held = SubscriptionsFile(str(path), served_regions=("us-east-1",))
    seen: list[int] = []
    held.on_change(lambda found: seen.append(len(found)))
    path.write_text("[[webhook]]\nname = 'ci'\n")
    assert held.reload() is False and list(held.current.by_name) == ["ci"] and seen == []
    path.write_text(path.read_text() + "")
    path.write_text('[[sns]]\nname = "b"\ntopic_arn = "arn:aws:sns:us-east-1:123456789012:t"\n')
    assert held.reload() is True and list(held.current.by_name) == ["b"] and seen == [1]
    with pytest.raises(ConfigurationError, match=r"^STATUSCACHE_SUBSCRIPTIONS_FILE .*: cannot read it"):
        load(str(tmp_path / "nope.toml"), served_regions=("us-east-1",))
    assert os.path.exists(path)
