"""Notifications end to end: webhooks verified by a Standard Webhooks receiver, SNS read back from an SQS queue,
the SSM "latest image" parameter, failures and retries, 410, dead letters, replay, and the status route."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import orjson
import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import func, select
from standardwebhooks import Webhook as Verifier

from service.api.app import create_app
from service.demo.fakeaws import FakeAws
from service.domain.models import AmiInfo, Change, ConfigLocation, Observed, Source, StackInfo
from service.notify.config import SubscriptionsFile
from service.notify.notifier import Notifier
from service.runtime import Runtime
from service.settings import Settings
from service.store.tables import dead_letters
from tests.conftest import REGION, free_port

pytestmark = pytest.mark.asyncio

SECRET = "whsec_" + base64.b64encode(b"r" * 32).decode()
CREATED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def image_change(
    image_id: str, stack_status: str, *, minute: int, ami_id: str | None = None, created: datetime = CREATED
) -> Change:
    at = CREATED + timedelta(minutes=minute)
    tags = (("parallelcluster:image_id", image_id), ("parallelcluster:version", "3.9.0"))
    stack = StackInfo(
        name=image_id, stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{image_id}/1",
        status=stack_status, creation_time=created, tags=tags,
    )  # fmt: skip
    ami = None
    if ami_id is not None:
        ami = AmiInfo(ami_id=ami_id, state="available", tags=(*tags, ("parallelcluster:build_status", "available")),
                      creation_date=created.isoformat())  # fmt: skip
    return Change(
        region=REGION, image_id=image_id, source=Source.EVENT, observed_at=at, happened_at=at,
        stack=Observed(at, stack), ami=Observed(at, ami),
        config=Observed(at, ConfigLocation(bucket="b", key=f"{image_id}/config.yaml", available=True)),
    )  # fmt: skip


class Receiver:
    """A webhook receiver that verifies every delivery with the standardwebhooks library, as any receiver would."""

    def __init__(self) -> None:
        self.verifier = Verifier(SECRET)
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.attempts: list[tuple[str, float]] = []
        self.answer: Callable[[str], tuple[int, dict[str, str]]] = lambda message_id: (204, {})
        self.arrived = asyncio.Event()
        # Seconds each request takes to answer (a slow receiver).
        self.delay = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        payload = self.verifier.verify(body, headers)  # raises on a bad signature: the test fails loudly
        self.attempts.append((headers["webhook-id"], time.monotonic()))
        if self.delay:
            await asyncio.sleep(self.delay)
        status, extra = self.answer(headers["webhook-id"])
        if 200 <= status < 300:
            self.got.append((headers["webhook-id"], payload))
            self.arrived.set()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in extra.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})

    def images(self) -> list[tuple[str, str]]:
        return [(item["data"]["imageId"], item["data"]["imageBuildStatus"]) for _, item in self.got]


@contextlib.asynccontextmanager
async def listening(app: Any, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def until(predicate: Callable[[], bool], *, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.02)


def fast(settings: Settings, **more: Any) -> Settings:
    return dataclasses.replace(
        settings, notify_retry_initial_seconds=0.05, notify_retry_max_seconds=0.4, notify_poll_seconds=0.1,
        notify_timeout_seconds=2.0, **more,
    )  # fmt: skip


@pytest_asyncio.fixture
async def quick(settings: Settings, aws_state: FakeAws) -> AsyncIterator[Runtime]:
    """A runtime with short retry settings (and no loops of its own but the notifier's)."""
    from service.aws import Aws
    from service.store import db

    tuned = fast(settings)
    engine = db.create_engine(tuned)
    built = Runtime.build(tuned, engine=engine, aws=Aws())
    try:
        yield built
    finally:
        await built.close()


def subscriptions_file(tmp_path: Path, body: str) -> SubscriptionsFile:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    path = tmp_path / "subscriptions.toml"
    path.write_text(body.replace("SECRET_FILE", str(secret)))
    return SubscriptionsFile(str(path), served_regions=(REGION,))


def webhook(url: str, *, path: str = "/hooks", **filters: str) -> str:
    extra = "".join(f"{key} = {value}\n" for key, value in filters.items())
    return f'[[webhook]]\nname = "ci"\nurl = "{url}{path}"\nsecret_file = "SECRET_FILE"\n{extra}'


async def apply(runtime: Runtime, *changes: Change) -> None:
    await runtime.cache.apply_many(list(changes))


async def test_only_news_is_sent_in_change_order_and_every_delivery_verifies(quick: Runtime, tmp_path: Path) -> None:
    receiver = Receiver()
    async with listening(receiver, free_port()) as url:
        # The fleet before the subscription: existing images, and the cache filling with them, are not news.
        await apply(
            quick, image_change("old-a", "CREATE_COMPLETE", minute=0), image_change("b", "CREATE_IN_PROGRESS", minute=0)
        )
        notifier = quick.notify(subscriptions_file(tmp_path, webhook(url)))
        await until(lambda: "ci" in quick.metrics.notify_lag)
        await apply(quick, image_change("late-filled", "CREATE_COMPLETE", minute=1))  # first seen now, made before
        await apply(quick, image_change("b", "CREATE_COMPLETE", minute=2))
        await apply(quick, image_change("b", "DELETE_IN_PROGRESS", minute=3))
        fresh = datetime.now(UTC)
        await apply(quick, image_change("new", "CREATE_IN_PROGRESS", minute=4, created=fresh))
        await until(lambda: len(receiver.got) >= 3)
        await asyncio.sleep(0.3)
    assert receiver.images() == [("b", "BUILD_COMPLETE"), ("b", "DELETE_IN_PROGRESS"), ("new", "BUILD_IN_PROGRESS")]
    ids = [message_id for message_id, _ in receiver.got]
    sequences = [item["data"]["sequence"] for _, item in receiver.got]
    assert sequences == sorted(sequences) and ids == [f"msg_{seq}" for seq in sequences]
    first = receiver.got[0][1]
    assert first["type"] == "image.transition"
    assert first["data"]["previousImageBuildStatus"] == "BUILD_IN_PROGRESS"
    assert first["data"]["time"] == "2026-05-01T12:02:00.000Z" and first["data"]["image"]["imageId"] == "b"
    health = {item["name"]: item for item in await notifier.health()}
    assert health["ci"]["cursor"] == max(sequences) and health["ci"]["lagSeconds"] == 0.0
    assert health["ci"]["deadLetters"] == 0 and health["ci"]["disabled"] is False


async def test_a_receiver_down_then_up_gets_everything_with_the_same_ids(quick: Runtime, tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: connection refused
    receiver = Receiver()
    await apply(quick, *(image_change(f"img-{n}", "CREATE_IN_PROGRESS", minute=0) for n in range(5)))
    quick.notify(subscriptions_file(tmp_path, webhook(f"http://127.0.0.1:{port}", statuses='["BUILD_COMPLETE"]')))
    await until(lambda: "ci" in quick.metrics.notify_lag)
    await apply(quick, *(image_change(f"img-{n}", "CREATE_COMPLETE", minute=1) for n in range(5)))
    await until(lambda: quick.metrics.deliveries[("ci", "failed")] >= 3)
    # Up, but overloaded at first: 503s, then accepted.
    overloaded = {"left": 3}

    def answer(message_id: str) -> tuple[int, dict[str, str]]:
        if overloaded["left"]:
            overloaded["left"] -= 1
            return 503, {}
        return 200, {}

    receiver.answer = answer
    async with listening(receiver, port):
        await until(lambda: len(receiver.got) == 5)
    assert receiver.images() == [(f"img-{n}", "BUILD_COMPLETE") for n in range(5)]
    first_id = receiver.got[0][0]
    assert [message_id for message_id, _ in receiver.attempts[:4]] == [first_id] * 4  # 3 refusals, then accepted
    assert quick.metrics.deliveries[("ci", "delivered")] == 5


async def test_retry_after_is_honoured(quick: Runtime, tmp_path: Path) -> None:
    receiver = Receiver()
    throttled = {"left": 1}

    def answer(message_id: str) -> tuple[int, dict[str, str]]:
        if throttled["left"]:
            throttled["left"] -= 1
            return 429, {"retry-after": "1"}
        return 204, {}

    receiver.answer = answer
    await apply(quick, image_change("slow", "CREATE_IN_PROGRESS", minute=0))
    async with listening(receiver, free_port()) as url:
        quick.notify(subscriptions_file(tmp_path, webhook(url)))
        await until(lambda: "ci" in quick.metrics.notify_lag)
        await apply(quick, image_change("slow", "CREATE_COMPLETE", minute=1))
        await until(lambda: len(receiver.got) == 1)
    (first, at_first), (second, at_second) = receiver.attempts
    assert first == second and at_second - at_first >= 0.95


async def test_a_410_disables_the_subscription(quick: Runtime, tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.answer = lambda message_id: (410, {})
    await apply(quick, image_change("gone-hook", "CREATE_IN_PROGRESS", minute=0))
    async with listening(receiver, free_port()) as url:
        notifier = quick.notify(subscriptions_file(tmp_path, webhook(url)))
        await until(lambda: "ci" in quick.metrics.notify_lag)
        await apply(quick, image_change("gone-hook", "CREATE_COMPLETE", minute=1))
        await until(lambda: quick.metrics.deliveries[("ci", "disabled")] == 1)
        await apply(quick, image_change("gone-hook", "DELETE_IN_PROGRESS", minute=2))
        await asyncio.sleep(0.5)
    assert len(receiver.attempts) == 1
    (health,) = await notifier.health()
    assert health["disabled"] is True and "410" in health["disabledReason"]


async def test_a_delivery_failing_past_the_give_up_bound_is_a_dead_letter_and_the_rest_flows(
    settings: Settings, aws_state: FakeAws, tmp_path: Path
) -> None:
    from service.aws import Aws
    from service.store import db

    tuned = fast(settings, notify_give_up_seconds=0.3)
    runtime = Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws())
    receiver = Receiver()
    # The first change sent (p's) is refused every time; the answer is chosen as it arrives, not after the test has
    # looked the change up (by then it may have been delivered).
    poisoned = [""]

    def answer(message_id: str) -> tuple[int, dict[str, str]]:
        poisoned[0] = poisoned[0] or message_id
        return (500, {}) if message_id == poisoned[0] else (204, {})

    receiver.answer = answer
    try:
        await apply(
            runtime, image_change("p", "CREATE_IN_PROGRESS", minute=0),
            image_change("q", "CREATE_IN_PROGRESS", minute=0),
        )
        async with listening(receiver, free_port()) as url:
            notifier = runtime.notify(subscriptions_file(tmp_path, webhook(url)))
            await until(lambda: "ci" in runtime.metrics.notify_lag)
            await apply(runtime, image_change("p", "CREATE_COMPLETE", minute=1))
            async with runtime.engine.connect() as connection:
                seq = (await connection.execute(select(func.max(dead_letters.c.id)))).scalar_one()
            assert seq is None
            await until(lambda: bool(poisoned[0]))
            assert poisoned[0] == f"msg_{(await _latest_transition(runtime))}"
            await apply(runtime, image_change("q", "CREATE_COMPLETE", minute=2))
            await until(lambda: runtime.metrics.deliveries[("ci", "dead_letter")] == 1)
            await until(lambda: len(receiver.got) == 1)
            (health,) = await notifier.health()
        assert receiver.images() == [("q", "BUILD_COMPLETE")]
        assert health["deadLetters"] == 1 and "500" in health["lastError"]
        async with runtime.engine.connect() as connection:
            letter = (await connection.execute(select(dead_letters))).one()
        assert letter.message_id == poisoned[0] and json.loads(letter.body)["data"]["imageId"] == "p"
    finally:
        await runtime.close()


async def _latest_transition(runtime: Runtime) -> int:
    from service.store.tables import transitions

    async with runtime.engine.connect() as connection:
        return int((await connection.execute(select(func.max(transitions.c.id)))).scalar_one())


async def test_a_replay_made_on_another_replica_is_followed(
    quick: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivering replica keeps its subscription's row in memory: a replay written by another replica is seen
    when the row is read again (after a while, shortened here), or at once when a cursor write runs into it."""
    from service.notify import deliverer
    from service.store import subscriptions as store

    monkeypatch.setattr(deliverer, "STATE_SECONDS", 0.3)
    receiver = Receiver()
    await apply(quick, image_change("elsewhere", "CREATE_IN_PROGRESS", minute=0))
    async with listening(receiver, free_port()) as url:
        quick.notify(subscriptions_file(tmp_path, webhook(url)))
        await until(lambda: "ci" in quick.metrics.notify_lag)
        await apply(quick, image_change("elsewhere", "CREATE_COMPLETE", minute=1))
        await until(lambda: len(receiver.got) == 1)
        seq = receiver.got[0][1]["data"]["sequence"]
        # Idle, caught up: another replica's replay (written to the database only) is sent again all the same.
        await store.replay(quick.cache.writer, name="ci", since_seq=seq, since_time=None, now=datetime.now(UTC))
        await until(lambda: len(receiver.got) == 2)
        # While changes flow: the cursor write finds the cursor moved, reads the row again and sends from there.
        monkeypatch.setattr(deliverer, "STATE_SECONDS", 3600.0)
        await store.replay(quick.cache.writer, name="ci", since_seq=seq, since_time=None, now=datetime.now(UTC))
        await apply(quick, image_change("elsewhere", "DELETE_IN_PROGRESS", minute=2))
        await until(lambda: len(receiver.got) >= 4 and receiver.images()[-1] == ("elsewhere", "DELETE_IN_PROGRESS"))
        await asyncio.sleep(0.3)
    assert [message_id for message_id, _ in receiver.got][:2] == [receiver.got[0][0]] * 2
    assert receiver.images()[2:] in (
        [("elsewhere", "DELETE_IN_PROGRESS"), ("elsewhere", "BUILD_COMPLETE"), ("elsewhere", "DELETE_IN_PROGRESS")],
        [("elsewhere", "BUILD_COMPLETE"), ("elsewhere", "DELETE_IN_PROGRESS")],
    )


async def test_replay_sends_again_and_the_route_shows_no_secret(quick: Runtime, tmp_path: Path) -> None:
    receiver = Receiver()
    await apply(quick, image_change("r", "CREATE_IN_PROGRESS", minute=0))
    async with listening(receiver, free_port()) as url:
        quick.notify(subscriptions_file(tmp_path, webhook(url, path="/x/hooks?token=abc")))
        await until(lambda: "ci" in quick.metrics.notify_lag)
        await apply(quick, image_change("r", "CREATE_COMPLETE", minute=1))
        await until(lambda: len(receiver.got) == 1)
        app = create_app(quick.settings, runtime=quick)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as http:
            listed = await http.get("/v3/subscriptions")
            seq = receiver.got[0][1]["data"]["sequence"]
            replayed = await http.post(f"/v3/subscriptions/ci/replay?since={seq}")
            await until(lambda: len(receiver.got) == 2)
            unknown = await http.post("/v3/subscriptions/nope/replay?since=1")
            bad = await http.post("/v3/subscriptions/ci/replay?since=yesterday")
            by_time = await http.post("/v3/subscriptions/ci/replay?since=2000-01-01T00:00:00Z")
        async with listening(app, free_port()) as service_url:
            table = await asyncio.to_thread(_cli, "subscriptions", "--endpoint", service_url)
            as_json = await asyncio.to_thread(_cli, "subscriptions", "--endpoint", service_url, "--output", "json")
    assert listed.status_code == 200
    (item,) = listed.json()["subscriptions"]
    assert item["kind"] == "webhook" and item["target"].endswith("/x/hooks") and "token" not in listed.text
    assert SECRET not in listed.text and SECRET[6:20] not in listed.text
    assert replayed.status_code == 202 and replayed.json()["cursor"] == seq - 1
    assert receiver.got[1][0] == receiver.got[0][0]  # the same change: the same webhook-id
    assert unknown.status_code == 404 and bad.status_code == 400 and by_time.status_code == 202
    assert table[0] == 0 and table[1].splitlines()[0].split() == ["NAME", "KIND", "TARGET", "CURSOR", "LAG", "DEAD",
                                                                  "LETTERS", "STATE", "LAST", "ERROR"]  # fmt: skip
    assert table[1].splitlines()[1].split()[:3] == ["ci", "webhook", item["target"]]
    assert json.loads(as_json[1])[0]["name"] == "ci" and SECRET[6:20] not in table[1] + as_json[1]


def _cli(*argv: str) -> tuple[int, str]:
    import io

    from service.__main__ import _parser
    from service.client import cli

    out = io.StringIO()
    status = cli.run(_parser().parse_args(list(argv)), out=out)
    return status, out.getvalue()


async def test_sns_publishes_each_matching_change_with_filterable_attributes(
    quick: Runtime, tmp_path: Path, aws_state: FakeAws
) -> None:
    kw: dict[str, Any] = {"endpoint_url": aws_state.endpoint_url, "region_name": REGION}
    sns, sqs = boto3.client("sns", **kw), boto3.client("sqs", **kw)
    topic = sns.create_topic(Name="image-builds")["TopicArn"]
    queue = sqs.create_queue(QueueName="image-builds")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    await apply(
        quick, image_change("s-ok", "CREATE_IN_PROGRESS", minute=0),
        image_change("s-bad", "CREATE_IN_PROGRESS", minute=0),
    )
    body = f'[[sns]]\nname = "builds"\ntopic_arn = "{topic}"\nstatuses = ["BUILD_COMPLETE", "BUILD_FAILED"]\n'
    quick.notify(subscriptions_file(tmp_path, body))
    await until(lambda: "builds" in quick.metrics.notify_lag)
    await apply(
        quick, image_change("s-ok", "CREATE_COMPLETE", minute=1), image_change("s-bad", "ROLLBACK_COMPLETE", minute=1)
    )
    await until(lambda: quick.metrics.deliveries[("builds", "delivered")] == 2)
    messages: list[dict[str, Any]] = []
    while len(messages) < 2:
        answer = await asyncio.to_thread(
            sqs.receive_message, QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        messages.extend(answer.get("Messages", []))
    envelopes = [json.loads(message["Body"]) for message in messages]
    told = sorted((json.loads(e["Message"])["data"]["imageId"], e["MessageAttributes"]["imageBuildStatus"]["Value"])
                  for e in envelopes)  # fmt: skip
    assert told == [("s-bad", "BUILD_FAILED"), ("s-ok", "BUILD_COMPLETE")]
    assert {e["MessageAttributes"]["region"]["Value"] for e in envelopes} == {REGION}


async def test_the_latest_image_parameter_moves_forward_only(
    quick: Runtime, tmp_path: Path, aws_state: FakeAws
) -> None:
    ssm = boto3.client("ssm", endpoint_url=aws_state.endpoint_url, region_name=REGION)
    name = "/parallelcluster/images/alinux2/latest"
    now = datetime.now(UTC)
    await apply(
        quick, image_change("alinux2-a", "CREATE_IN_PROGRESS", minute=0, created=now),
        image_change("alinux2-b", "CREATE_IN_PROGRESS", minute=0, created=now + timedelta(seconds=5)),
        image_change("alinux2-c", "CREATE_IN_PROGRESS", minute=0, created=now + timedelta(seconds=10)),
        image_change("ubuntu-a", "CREATE_IN_PROGRESS", minute=0, created=now + timedelta(seconds=20)),
    )  # fmt: skip
    body = f'[[ssm_parameter]]\nname = "latest-alinux2"\nimage_ids = ["alinux2-*"]\nparameter = "{name}"\n'
    quick.notify(subscriptions_file(tmp_path, body))
    await until(lambda: "latest-alinux2" in quick.metrics.notify_lag)

    async def settled() -> str | None:
        await until(lambda: quick.metrics.notify_lag.get("latest-alinux2") == 0.0)
        await asyncio.sleep(0.3)
        await until(lambda: quick.metrics.notify_lag.get("latest-alinux2") == 0.0)
        try:
            return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
        except ssm.exceptions.ParameterNotFound:
            return None

    await apply(quick, image_change("alinux2-b", "CREATE_COMPLETE", minute=1, ami_id="ami-bbbbbbbb",
                                    created=now + timedelta(seconds=5)))  # fmt: skip
    assert await settled() == "ami-bbbbbbbb"
    # An older build completing later does not move it back; a failed one never moves it; another family neither.
    await apply(quick, image_change("alinux2-a", "CREATE_COMPLETE", minute=2, ami_id="ami-aaaaaaaa", created=now))
    await apply(quick, image_change("alinux2-c", "ROLLBACK_COMPLETE", minute=2, created=now + timedelta(seconds=10)))
    await apply(quick, image_change("ubuntu-a", "CREATE_COMPLETE", minute=2, ami_id="ami-uuuuuuuu",
                                    created=now + timedelta(seconds=20)))  # fmt: skip
    assert await settled() == "ami-bbbbbbbb"
    await apply(quick, image_change("alinux2-c", "CREATE_COMPLETE", minute=3, ami_id="ami-cccccccc",
                                    created=now + timedelta(seconds=10)))  # fmt: skip
    assert await settled() == "ami-cccccccc"


async def test_a_reload_starts_new_subscriptions_and_stops_removed_ones(quick: Runtime, tmp_path: Path) -> None:
    first, second = Receiver(), Receiver()
    await apply(quick, image_change("h", "CREATE_IN_PROGRESS", minute=0))
    async with listening(first, free_port()) as one, listening(second, free_port()) as two:
        held = subscriptions_file(tmp_path, webhook(one))
        notifier: Notifier = quick.notify(held)
        await until(lambda: "ci" in quick.metrics.notify_lag)
        renamed = webhook(two).replace('"ci"', '"cd"').replace("SECRET_FILE", str(tmp_path / "secret"))
        await asyncio.to_thread(Path(held.path).write_text, renamed)
        assert held.reload()
        await until(lambda: "cd" in quick.metrics.notify_lag)
        assert list(notifier.deliverers) == ["cd"]
        await apply(quick, image_change("h", "CREATE_COMPLETE", minute=1))
        await until(lambda: len(second.got) == 1)
        await asyncio.sleep(0.3)
    assert first.got == []
    assert orjson.dumps(second.got[0][1])  # verified, parsed


async def test_one_replica_delivers_each_subscription(
    settings: Settings, aws_state: FakeAws, tmp_path: Path
) -> None:
    """Two processes on one database, the same subscription: one holds its lease and delivers, once each change.

    On SQLite too: the workers of `serve --workers` share one SQLite file."""
    from service.aws import Aws
    from service.store import db

    tuned = fast(settings)
    one = Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws())
    two = Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws())
    receiver = Receiver()
    try:
        await apply(one, *(image_change(f"lease-{n}", "CREATE_IN_PROGRESS", minute=0) for n in range(10)))
        async with listening(receiver, free_port()) as url:
            one.notify(subscriptions_file(tmp_path, webhook(url)))
            two.notify(subscriptions_file(tmp_path, webhook(url)))
            await until(lambda: ("ci" in one.metrics.notify_lease) != ("ci" in two.metrics.notify_lease))
            holder, other = (one, two) if "ci" in one.metrics.notify_lease else (two, one)
            await apply(other, *(image_change(f"lease-{n}", "CREATE_COMPLETE", minute=1) for n in range(5)))
            await until(lambda: len(receiver.got) == 5)
            # The holder stops (it crashed, or was scaled away): the other takes the lease over and delivers on.
            await holder.close()
            await apply(other, *(image_change(f"lease-{n}", "CREATE_COMPLETE", minute=1) for n in range(5, 10)))
            await until(lambda: len(receiver.got) == 10, seconds=30)
            await asyncio.sleep(0.3)
        assert sorted(item["data"]["imageId"] for _, item in receiver.got) == [f"lease-{n}" for n in range(10)]
        assert "ci" in other.metrics.notify_lease
    finally:
        await one.close()
        await two.close()


async def test_shutting_down_mid_batch_writes_the_cursor_of_what_was_delivered(
    settings: Settings, aws_state: FakeAws, tmp_path: Path
) -> None:
    """A process stopping while it sends a batch finishes the delivery in hand, writes its cursor and stops: the
    replica (or the restart) taking over sends nothing twice and skips nothing."""
    from service.aws import Aws
    from service.store import db
    from service.store.tables import subscriptions

    tuned = fast(settings)
    runtime = Runtime.build(tuned, engine=db.create_engine(tuned), aws=Aws())
    receiver = Receiver()
    receiver.delay = 0.1
    try:
        await apply(runtime, *(image_change(f"mid-{n}", "CREATE_IN_PROGRESS", minute=0) for n in range(20)))
        async with listening(receiver, free_port()) as url:
            runtime.notify(subscriptions_file(tmp_path, webhook(url)))
            await until(lambda: "ci" in runtime.metrics.notify_lag)
            await apply(runtime, *(image_change(f"mid-{n}", "CREATE_COMPLETE", minute=1) for n in range(20)))
            await until(lambda: len(receiver.got) >= 3)
            started = time.monotonic()
            await runtime.close()
            assert time.monotonic() - started < 2.0, "the deliverer did not stop at the delivery in hand"
        assert 3 <= len(receiver.got) < 20
        engine = db.create_engine(tuned)
        try:
            async with engine.connect() as connection:
                cursor = (await connection.execute(select(subscriptions.c.delivered_seq))).scalar_one()
        finally:
            await engine.dispose()
        assert cursor == max(int(message_id.removeprefix("msg_")) for message_id, _ in receiver.got)
    finally:
        await runtime.close()


async def test_a_host_that_comes_to_resolve_to_instance_metadata_is_not_sent_to() -> None:
    from service.domain.subscriptions import Filters, Webhook
    from service.notify.sinks import WebhookSink

    hook = Webhook(name="ci", url="http://169.254.169.254/latest/meta-data/", secret_file="/s", filters=Filters(),
                   secret=b"k" * 32)  # fmt: skip
    async with WebhookSink.session(timeout=1.0) as http:
        answer = await WebhookSink(hook, http=http, timeout=1.0).send(_notice())
    assert answer.error is not None and "instance-metadata" in answer.error


def _notice() -> Any:
    from service.domain.deliveries import Notice

    return Notice(seq=1, region=REGION, image_id="i", happened_at=CREATED, observed_at=CREATED, source="event",
                  previous=None, status="BUILD_COMPLETE", document=None)  # fmt: skip
