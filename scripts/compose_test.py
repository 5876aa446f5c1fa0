"""`make compose-test`: the docker-compose stack up on a real Docker engine, checked as a person trying it would.

    .venv/bin/python scripts/compose_test.py

Steps, each named when it fails (the run then exits 1):
  engine   docker.io and a Compose installed where missing; dockerd started when no daemon answers.
  images   the images the files name: pulled when a registry answers, else local stand-ins (compose_images).
  up       the repository's docker-compose.yml built and brought up; the one-shots done, every check healthy.
  parity   both API replicas answer every seeded image identically, and as `statuscache describe-image` prints it.
  event    a stack status change event sent to the queue reaches both replicas (their change streams) within 2 s.
  restart  the poller stopped, events sent meanwhile, the poller started again: every one of them is applied.
  down     `down -v` leaves no container, network or volume of the project behind.

Whatever happens, the stack is taken down and a dockerd this run started is stopped. Everything the checks
send goes to 127.0.0.1 (the ports the file publishes on loopback); the containers talk on the stack's network.
"""

from __future__ import annotations

import ast
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import httpx
import yaml
from compose_engine import Engine, build_env, ensure_engine
from compose_images import compose_images, dockerfile_bases, ensure_images

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Its own project name, so a stack a person started from this checkout (named after the folder) is not touched.
PROJECT = "statuscache-compose-test"
REGION = "us-east-1"
ACCOUNT = "123456789012"
REPLICAS = {"api-1": "http://127.0.0.1:8081", "api-2": "http://127.0.0.1:8082"}
MOTO = "http://127.0.0.1:5000"
EVENT_SECONDS = 2.0
HEALTH_SECONDS = 180.0
DRAIN_SECONDS = 60.0
RESTART_EVENTS = 3


class CheckFailed(AssertionError):
    """A check saw something other than what the stack should show."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- compose ------------------------------------------------------------------------------------------------


class Stack:
    """The compose project this run brings up; `down` is safe to call any number of times."""

    def __init__(self, engine: Engine) -> None:
        self.compose = [*engine.compose, "-p", PROJECT, "-f", str(COMPOSE_FILE)]
        self.env = build_env()
        self.v1 = engine.compose == ["docker-compose"]
        self.up_called = False

    def run(self, *args: str, timeout: float = 1800) -> str:
        done = subprocess.run(
            [*self.compose, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if done.returncode != 0:
            raise CheckFailed(f"compose {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
        return done.stdout

    def up(self) -> None:
        """`up --build`, as two commands: Compose v1's classic builds leave a failed step's container behind
        unless told `--force-rm` (v2 builds with BuildKit, which leaves none)."""
        self.up_called = True
        self.run("build", *(["--force-rm"] if self.v1 else []))
        self.run("up", "-d")

    def container(self, service: str) -> str:
        ids = self.run("ps", "-a", "-q", service).split()
        check(len(ids) == 1, f"{service}: expected one container, found {ids}")
        return ids[0]

    def state(self, service: str) -> dict[str, Any]:
        done = subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}", self.container(service)],
            capture_output=True, text=True, check=True,
        )
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def logs(self, tail: int = 40) -> str:
        with contextlib.suppress(Exception):
            return self.run("logs", "--no-color", "--tail", str(tail), timeout=60)
        return ""

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", timeout=300)
        self.up_called = False


def leftovers() -> dict[str, list[str]]:
    """The project's containers (in any state), networks and volumes the engine still has."""
    found: dict[str, list[str]] = {}
    for kind, listing in {
        "containers": ["ps", "-a", "--format", "{{.Names}}\t{{.Labels}}"],
        "networks": ["network", "ls", "--format", "{{.Name}}\t{{.Labels}}"],
        "volumes": ["volume", "ls", "--format", "{{.Name}}\t{{.Labels}}"],
    }.items():
        lines = subprocess.run(["docker", *listing], capture_output=True, text=True, check=True).stdout.splitlines()
        # By the project's label, or by name (both Compose versions prefix names with the project).
        found[kind] = sorted(
            name
            for name, _, labels in (line.partition("\t") for line in lines)
            if f"com.docker.compose.project={PROJECT}" in labels or name.startswith(PROJECT)
        )
    return found


# --- the checks ---------------------------------------------------------------------------------------------


def wait_healthy(stack: Stack) -> None:
    """The one-shots exited 0, every service with a check is healthy, the poller runs."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    deadline = time.monotonic() + HEALTH_SECONDS
    while True:
        waiting = []
        for name, service in services.items():
            state = stack.state(name)
            if service.get("restart") == "no":
                check(state["Status"] != "exited" or state["ExitCode"] == 0, f"{name} exited with {state['ExitCode']}")
                if state["Status"] != "exited":
                    waiting.append(f"{name} (running)")
                continue
            check(state["Status"] == "running", f"{name} is {state['Status']}")
            health = (state.get("Health") or {}).get("Status")
            if health not in (None, "healthy"):
                check(health != "unhealthy", f"{name} is unhealthy")
                waiting.append(f"{name} ({health})")
        if not waiting:
            return
        check(time.monotonic() < deadline, f"not healthy within {HEALTH_SECONDS:.0f}s: {', '.join(waiting)}")
        time.sleep(1)


def describe(base: str, image_id: str) -> httpx.Response:
    return httpx.get(f"{base}/v3/images/custom/{image_id}", params={"region": REGION}, timeout=10)


def without_signature(document: dict[str, Any]) -> dict[str, Any]:
    """The describe document with its pre-signed URL cut to scheme, host and path (each answer is signed anew)."""
    url = document.get("imageConfiguration", {}).get("url", "")
    parts = urlsplit(url)
    return document | {"imageConfiguration": {"url": urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))}}


def transitions(image_id: str | None = None) -> list[dict[str, Any]]:
    params = {"region": REGION} | ({"imageId": image_id} if image_id else {})
    response = httpx.get(f"{REPLICAS['api-1']}/v3/image-transitions", params=params, timeout=10)
    check(response.status_code == 200, f"image-transitions answered {response.status_code}: {response.text}")
    found: list[dict[str, Any]] = response.json()["transitions"]
    return found


def replicas_agree(image_id: str) -> dict[str, Any]:
    """Both replicas' describe answers for the image: 200 from the cache, the same ETag and document."""
    for _ in range(2):  # the ETag carries the signing window, which may turn over between two requests
        replies = {name: describe(base, image_id) for name, base in REPLICAS.items()}
        for name, reply in replies.items():
            check(
                (reply.status_code, reply.headers.get("x-cache")) == (200, "HIT"),
                f"{name} answered {image_id} with {reply.status_code} x-cache={reply.headers.get('x-cache')}: "
                f"{reply.text[:300]}",
            )
        if len({reply.headers["etag"] for reply in replies.values()}) == 1:
            break
    else:
        raise CheckFailed(f"{image_id}: the replicas answer different ETags")
    first, second = (without_signature(reply.json()) for reply in replies.values())
    check(first == second, f"{image_id}: the replicas' documents differ:\n{first}\n{second}")
    return first


def cli_describe(base: str, image_id: str) -> dict[str, Any]:
    """What `statuscache describe-image` prints for the image, asking the replica at `base`."""
    done = subprocess.run(
        [sys.executable, "-m", "service", "describe-image", "-i", image_id, "-r", REGION, "--endpoint", base],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    check(done.returncode == 0, f"statuscache describe-image -i {image_id} exited {done.returncode}: {done.stderr}")
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed


def check_parity() -> list[str]:
    from service.demo import seeding

    image_ids = [image.image_id for image in seeding.SEED_IMAGES]
    deadline = time.monotonic() + 60
    # Asked before the poller's first reconcile stored them, a replica would look them up itself: wait for it.
    while not set(image_ids) <= {row["imageId"] for row in transitions()}:
        check(time.monotonic() < deadline, "the poller's first reconcile did not store the seeded images in 60s")
        time.sleep(0.5)
    for image_id in image_ids:
        document = replicas_agree(image_id)
        check(document["imageBuildStatus"] == "BUILD_COMPLETE", f"{image_id}: {document['imageBuildStatus']}")
        for name, base in REPLICAS.items():
            printed = without_signature(cli_describe(base, image_id))
            check(printed == document, f"{image_id}: describe-image via {name} prints\n{printed}\nnot\n{document}")
    return image_ids


class Aws:
    """The stack's moto, reached on its loopback port, as the AWS an image build would change."""

    def __init__(self) -> None:
        from service.demo import seeding

        self.seeding = seeding
        options: dict[str, Any] = {
            "region_name": REGION,
            "endpoint_url": MOTO,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        self.cloudformation = boto3.client("cloudformation", **options)
        self.sqs = boto3.client("sqs", **options)
        self.s3 = boto3.client("s3", **options)
        self.queue_url = self.sqs.get_queue_url(QueueName=seeding.DEFAULT_QUEUE_NAME)["QueueUrl"]
        self.dlq_url = self.sqs.get_queue_url(QueueName=f"{seeding.DEFAULT_QUEUE_NAME}-dlq")["QueueUrl"]

    def new_build(self, prefix: str) -> tuple[str, str]:
        """A finished build stack for a new image id (moto creates stacks CREATE_COMPLETE): (image id, stack id)."""
        image_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
        bucket = self.s3.list_buckets()["Buckets"][0]["Name"]
        tags = self.seeding.parallelcluster_tags(
            account_id=ACCOUNT, region=REGION, image_id=image_id, version=self.seeding.VERSION, bucket=bucket
        )
        stack_id = self.cloudformation.create_stack(
            StackName=image_id,
            TemplateBody=self.seeding.image_template(image_id),
            Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
        )["StackId"]
        return image_id, str(stack_id)

    def send_stack_event(self, stack_id: str, status: str) -> None:
        """The event EventBridge delivers for a stack status change, sent to the events queue."""
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "CloudFormation Stack Status Change",
            "source": "aws.cloudformation",
            "account": ACCOUNT,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [stack_id],
            "detail": {
                "stack-id": stack_id,
                "status-details": {"status": status, "status-reason": ""},
                "client-request-token": "",
            },
        }
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(event))

    def waiting(self, queue_url: str) -> tuple[int, int]:
        """(visible, in flight) messages on a queue."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        return int(attributes[names[0]]), int(attributes[names[1]])

    def wait_seconds(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ReceiveMessageWaitTimeSeconds"]
        )["Attributes"]
        return int(attributes["ReceiveMessageWaitTimeSeconds"])


class ChangeWatch(threading.Thread):
    """One replica's change stream for one image, read until it carries that image's document."""

    def __init__(self, base: str, image_id: str) -> None:
        super().__init__(daemon=True)
        self.base, self.image_id = base, image_id
        self.connected = threading.Event()
        self.arrived: float | None = None
        self.document: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        params = {"region": REGION, "imageId": self.image_id}
        try:
            with httpx.stream("GET", f"{self.base}/v3/image-changes", params=params, timeout=30) as response:
                check(response.status_code == 200, f"{self.base}: image-changes answered {response.status_code}")
                event = ""
                for line in response.iter_lines():
                    if line.startswith(": connected"):
                        self.connected.set()
                    elif line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:") and event == "image":
                        self.arrived = time.monotonic()
                        self.document = json.loads(line.partition(":")[2])
                        return
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc
        finally:
            self.connected.set()


def check_event(aws: Aws) -> float:
    """A new build's stack status change event: seconds until the later of the two replicas' streams carried it."""
    for _ in range(2):
        image_id, stack_id = aws.new_build("compose-event")
        watches = [ChangeWatch(base, image_id) for base in REPLICAS.values()]
        for watch in watches:
            watch.start()
        for watch in watches:
            check(watch.connected.wait(10) and watch.error is None, f"{watch.base}: no change stream: {watch.error}")
        aws.send_stack_event(stack_id, "CREATE_COMPLETE")
        sent = time.monotonic()
        for watch in watches:
            watch.join(timeout=max(0.0, sent + EVENT_SECONDS - time.monotonic()))
        late = [watch.base for watch in watches if watch.arrived is None]
        check(not late, f"{image_id}: the event did not reach {', '.join(late)} within {EVENT_SECONDS}s")
        # The poller's periodic reconcile can find a new stack first; then the event proved nothing: again.
        if transitions(image_id)[0]["source"] != "event":
            continue
        document = replicas_agree(image_id)
        check(
            (document["imageBuildStatus"], document.get("cloudformationStackArn")) == ("BUILD_COMPLETE", stack_id),
            f"{image_id}: {document}",
        )
        return max(watch.arrived or 0.0 for watch in watches) - sent
    raise CheckFailed("the reconcile stored the new build before its event twice in a row")


def check_restart(stack: Stack, aws: Aws) -> tuple[float, dict[str, int]]:
    """Stop the poller, send events, start it: every event is handled and leaves the queue, none is lost.

    Returns the seconds from the start to an empty queue, and the restarted consumer's counts."""
    stopped = time.monotonic()
    stack.run("stop", "poller")
    # The stopped poller's last long polls stay open at moto for the queue's wait time; a message arriving
    # then would go to nobody until its visibility timeout. Send after them, as the check is about restarts.
    time.sleep(max(0.0, stopped + aws.wait_seconds() + 1 - time.monotonic()))
    builds = [aws.new_build("compose-restart") for _ in range(RESTART_EVENTS)]
    for _, stack_id in builds:
        aws.send_stack_event(stack_id, "CREATE_COMPLETE")
    check(
        aws.waiting(aws.queue_url) == (RESTART_EVENTS, 0),
        f"with the poller stopped the queue holds (visible, in flight) {aws.waiting(aws.queue_url)}, "
        f"not the {RESTART_EVENTS} events sent",
    )
    started = time.monotonic()
    stack.run("start", "poller")
    image_ids = [image_id for image_id, _ in builds]
    while aws.waiting(aws.queue_url) != (0, 0) or not all(transitions(image_id) for image_id in image_ids):
        check(stack.state("poller")["Status"] == "running", "the poller is not running after its start")
        check(
            time.monotonic() < started + DRAIN_SECONDS,
            f"{DRAIN_SECONDS:.0f}s after the poller started: queue (visible, in flight) {aws.waiting(aws.queue_url)}",
        )
        time.sleep(0.2)
    drained = time.monotonic() - started
    check(aws.waiting(aws.dlq_url) == (0, 0), f"events went to the dead-letter queue: {aws.waiting(aws.dlq_url)}")
    for image_id, stack_id in builds:
        document = replicas_agree(image_id)
        check(document.get("cloudformationStackArn") == stack_id, f"{image_id}: {document}")
    # The restarted poller's reconcile may have stored the new builds before its consumer read their events
    # (they then change nothing: "stale"). Either way each event must have been handled, not dropped: its
    # consumer counts what it received and deleted, and logs the counts when it stops.
    stack.run("stop", "poller")
    counts = consumer_counts(stack.run("logs", "--no-color", "poller"))
    check(
        counts.get("received") == counts.get("deleted") == RESTART_EVENTS,
        f"the restarted poller's consumer did not receive and delete the {RESTART_EVENTS} events: {counts}",
    )
    return drained, counts


def consumer_counts(log: str) -> dict[str, int]:
    """The event counters in the last "event consumer stopped: {...}" line of a poller's log."""
    lines = [line for line in log.splitlines() if "event consumer stopped: " in line]
    check(lines, "the poller did not log its consumer's counts when it stopped")
    counts: dict[str, int] = ast.literal_eval(lines[-1].partition("event consumer stopped: ")[2].strip())
    return counts


# --- the run ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def step(name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"compose-test: [{name}] ...", flush=True)
    began = time.monotonic()
    yield
    timings[name] = time.monotonic() - began
    print(f"compose-test: [{name}] ok ({timings[name]:.1f}s)", flush=True)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # Turns SIGTERM into an exception, so the cleanup below runs as it does for a failure.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    timings: dict[str, float] = {}
    engine: Engine | None = None
    stack: Stack | None = None
    failed: str | None = None
    current = "engine"
    results: dict[str, Any] = {}

    def engine_step() -> None:
        nonlocal engine, stack
        engine = ensure_engine()
        stack = Stack(engine)
        results["compose"] = " ".join(engine.compose)

    def images_step() -> None:
        (python_image,) = dockerfile_bases(ROOT / "Dockerfile")
        images = [python_image, *compose_images(COMPOSE_FILE)]
        results["images"] = ensure_images(images, python_image=python_image, env=build_env())

    def up_step() -> None:
        assert stack is not None
        if any(leftovers().values()):  # a run killed before its cleanup
            stack.down()
        stack.up()
        wait_healthy(stack)

    def parity_step() -> None:
        results["parity"] = check_parity()

    def event_step() -> None:
        results["event_seconds"] = check_event(Aws())

    def restart_step() -> None:
        assert stack is not None
        results["restart"] = check_restart(stack, Aws())

    def down_step() -> None:
        assert stack is not None
        stack.down()
        left = leftovers()
        check(not any(left.values()), f"left behind after down -v: {left}")

    steps: list[tuple[str, Callable[[], None]]] = [
        ("engine", engine_step),
        ("images", images_step),
        ("up", up_step),
        ("parity", parity_step),
        ("event", event_step),
        ("restart", restart_step),
        ("down", down_step),
    ]
    try:
        for current, run in steps:
            with step(current, timings):
                run()
    except BaseException as exc:
        failed = current
        print(f"compose-test: FAILED at step [{current}]: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if stack is not None and stack.up_called:
            print(f"compose-test: the stack's last log lines:\n{stack.logs()}", file=sys.stderr, flush=True)
    finally:
        if stack is not None and stack.up_called:
            with contextlib.suppress(Exception):
                stack.down()
        if engine is not None:
            engine.stop(keep_log=failed is not None)
    if failed is not None:
        return 1
    event_seconds = results["event_seconds"]
    drained, counts = results["restart"]
    for image, how in results["images"].items():
        print(f"compose-test: image {image}: {how}")
    print(f"compose-test: compose: {results['compose']}")
    print(f"compose-test: parity: {', '.join(results['parity'])} answered alike by both replicas and the CLI")
    print(f"compose-test: event: on both replicas' change streams {event_seconds:.2f}s after it was sent")
    print(
        f"compose-test: restart: {RESTART_EVENTS} events sent while the poller was stopped, all received and "
        f"deleted after its start (queue empty in {drained:.1f}s); its consumer's counts: {counts}"
    )
    steps_taken = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in timings.items())
    print(f"compose-test: passed in {time.monotonic() - began:.0f}s ({steps_taken})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
