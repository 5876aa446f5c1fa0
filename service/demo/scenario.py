"""The embedded demo: four ParallelCluster image builds played out on a FakeAws over about three minutes."""

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.demo.fakeaws import ACCOUNT_ID, FakeAws
from service.support.stopping import sleep_until_stopped

log = logging.getLogger(__name__)

DEMO_REGION = "us-east-1"
VERSION = "3.9.0"

FINISHED = "alinux2-hpc-ready"  # built before the demo starts: an AMI, no stack
SUCCEEDS = "ubuntu2204-gpu-build"  # builds, gets its AMI, then its stack is deleted
ROLLS_BACK = "rocky9-rollback"  # Image Builder fails, the stack rolls back
BUILDING = "alinux2023-slurm-long"  # still building when the demo ends

ROLLBACK_REASON = "The following resource(s) failed to create: [ParallelClusterImage]. Rollback requested by user."


Envelope = dict[str, Any]


@dataclass(frozen=True)
class DemoStep:
    at_seconds: float
    description: str
    action: Callable[[FakeAws], None]
    # The EventBridge event AWS would send for this step, built after the action (None: no event).
    event: Callable[[FakeAws], Envelope | None] = field(default=lambda fake: None)


def envelope(*, detail_type: str, source: str, region: str, resources: list[str], detail: dict[str, Any]) -> Envelope:
    """An EventBridge envelope as SQS delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": resources,
        "detail": detail,
    }


def seed(fake: FakeAws, *, region: str = DEMO_REGION) -> list[str]:
    """Create the state at t=0 and return the demo's image ids."""
    fake.create_ami(
        region=region,
        image_id=FINISHED,
        version=VERSION,
        description="AWS ParallelCluster AMI for alinux2, kernel-5.10.217, lustre-2.12.8, efa-1.32.0",
    )
    for image_id in (SUCCEEDS, ROLLS_BACK, BUILDING):
        fake.create_image_stack(region=region, image_id=image_id, version=VERSION, imagebuilder_status="BUILDING")
    # Each build's Image Builder log as far as it got: what the evidence capture keeps when it ends.
    for image_id, lines in ((SUCCEEDS, BUILD_LOG_LINES), (ROLLS_BACK, FAILED_LOG_LINES), (BUILDING, 400)):
        fake.put_build_log(region=region, image_id=image_id, stream=f"{VERSION}/1", messages=build_log(lines))
    return [FINISHED, SUCCEEDS, ROLLS_BACK, BUILDING]


# A ParallelCluster build's component output runs to thousands of lines (cookbooks, packages, tests).
BUILD_LOG_LINES = 8_000
FAILED_LOG_LINES = 6_000
_LOG_PHRASES = (
    "Stdout: * execute[yum-config-manager_enable_epel] action run",
    "Stdout:   - execute yum-config-manager --enable epel",
    "Stdout: * package[environment-modules] action install (up to date)",
    "Stdout: Recipe: aws-parallelcluster-platform::cookbook_virtualenv",
    "Stdout: * python_virtualenv[/opt/parallelcluster/pyenv/versions/3.9.19/envs/cookbook_virtualenv] action create",
    "Stdout: [2026-11-30T10:21:07+00:00] INFO: Processing directory[/etc/parallelcluster] action create",
)


def build_log(lines: int, *, failed: bool = False) -> list[tuple[int, str]]:
    """`lines` log events (epoch milliseconds, message) ending now; a failed build's last lines say why."""
    end = int(datetime.now(UTC).timestamp() * 1000)
    start = end - lines * 100
    messages = [(start + i * 100, f"{_LOG_PHRASES[i % len(_LOG_PHRASES)]} ({i})") for i in range(lines)]
    if failed:
        messages += [
            (end, "Stderr: Error executing action `install` on resource 'package[slurm]'"),
            (end + 1, "Stderr: No match for argument: slurm-23.11.7"),
            (end + 2, "Failed to execute component: ExecuteBash failed with status Failed"),
        ]
    return messages


def steps(*, region: str = DEMO_REGION) -> list[DemoStep]:
    """The timeline after seed(), in time order."""

    def imagebuilder(image_id: str, status: str, reason: str | None = None) -> Callable[[FakeAws], None]:
        def act(fake: FakeAws) -> None:
            arn = fake.imagebuilder_arn(region=region, image_id=image_id, version=VERSION)
            fake.put_imagebuilder_image(arn, status=status, reason=reason)

        return act

    def imagebuilder_event(image_id: str, status: str, reason: str | None = None) -> Callable[[FakeAws], Envelope]:
        def emit(fake: FakeAws) -> Envelope:
            arn = fake.imagebuilder_arn(region=region, image_id=image_id, version=VERSION)
            state = {"status": status, **({"reason": reason} if reason else {})}
            return envelope(
                detail_type="EC2 Image Builder Image State Change", source="aws.imagebuilder", region=region,
                resources=[arn], detail={"state": state},
            )

        return emit

    def stack(image_id: str, status: str, reason: str | None = None) -> Callable[[FakeAws], None]:
        def act(fake: FakeAws) -> None:
            fake.set_stack_status(region=region, stack_name=image_id, status=status, reason=reason)

        return act

    def stack_event(image_id: str, status: str, reason: str | None = None) -> Callable[[FakeAws], Envelope]:
        def emit(fake: FakeAws) -> Envelope:
            stack_id = stack_ids.get(image_id) or fake.stack_id(region=region, stack_name=image_id)
            return envelope(
                detail_type="CloudFormation Stack Status Change", source="aws.cloudformation", region=region,
                resources=[stack_id],
                detail={"stack-id": stack_id, "status-details": {"status": status, "status-reason": reason or ""}},
            )

        return emit

    def ami_event(fake: FakeAws) -> Envelope:
        ami_id = fake.ami_ids(region=region, image_id=SUCCEEDS)[-1]
        return envelope(
            detail_type="EC2 AMI State Change", source="aws.ec2", region=region,
            resources=[f"arn:aws:ec2:{region}::image/{ami_id}"],
            detail={"ImageId": ami_id, "State": "available", "ErrorMessage": ""},
        )

    # The deleted stack's id, remembered before the delete (a deleted stack is not found by name).
    stack_ids: dict[str, str] = {}

    def register_ami(fake: FakeAws) -> None:
        description = "AWS ParallelCluster AMI for ubuntu2204, kernel-5.15.0-1061-aws, nvidia-535.183.01"
        fake.create_ami(region=region, image_id=SUCCEEDS, version=VERSION, description=description)

    def delete_stack(fake: FakeAws) -> None:
        stack_ids[SUCCEEDS] = fake.stack_id(region=region, stack_name=SUCCEEDS)
        fake.delete_stack(region=region, stack_name=SUCCEEDS)
        # Cleanup takes the build's log group with it: from here on only kept evidence answers.
        fake.delete_build_logs(region=region, image_id=SUCCEEDS)

    def imagebuilder_fails(fake: FakeAws) -> None:
        imagebuilder(ROLLS_BACK, "FAILED", build_failure)(fake)
        last_lines = build_log(0, failed=True)
        fake.put_build_log(region=region, image_id=ROLLS_BACK, stream=f"{VERSION}/1", messages=last_lines)
        arn = fake.imagebuilder_arn(region=region, image_id=ROLLS_BACK, version=VERSION)
        fake.add_stack_event(
            region=region, stack_name=ROLLS_BACK, logical_id="ParallelClusterImage", status="CREATE_FAILED",
            reason=build_failure, physical_id=arn,
        )  # fmt: skip

    component = f"arn:aws:imagebuilder:{region}:{ACCOUNT_ID}:component/parallelclusterimage-{ROLLS_BACK}/{VERSION}/1"
    build_failure = (
        "Image Build failed: Workflow Execution ID: 'wf-5c2d3f7a-91b4-4e0a-8d6f-2a7e9b1c4d08' failed with "
        "reason: Step 'Build' failed. SSM execution '7f0e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b' failed with "
        "status = 'Failed' in state = 'BUILDING' and failure message = 'Step fails when it is Execution: "
        f"ExecuteBash failed with status Failed. Document {component} failed!'"
    )
    return [
        DemoStep(
            30, f"{SUCCEEDS}: Image Builder TESTING", imagebuilder(SUCCEEDS, "TESTING"),
            imagebuilder_event(SUCCEEDS, "TESTING"),
        ),
        DemoStep(
            50, f"{ROLLS_BACK}: Image Builder FAILED", imagebuilder_fails,
            imagebuilder_event(ROLLS_BACK, "FAILED", build_failure),
        ),
        DemoStep(
            55,
            f"{ROLLS_BACK}: stack ROLLBACK_IN_PROGRESS",
            stack(ROLLS_BACK, "ROLLBACK_IN_PROGRESS", ROLLBACK_REASON),
            stack_event(ROLLS_BACK, "ROLLBACK_IN_PROGRESS", ROLLBACK_REASON),
        ),
        DemoStep(
            65, f"{SUCCEEDS}: Image Builder DISTRIBUTING", imagebuilder(SUCCEEDS, "DISTRIBUTING"),
            imagebuilder_event(SUCCEEDS, "DISTRIBUTING"),
        ),
        DemoStep(
            95, f"{SUCCEEDS}: Image Builder AVAILABLE", imagebuilder(SUCCEEDS, "AVAILABLE"),
            imagebuilder_event(SUCCEEDS, "AVAILABLE"),
        ),
        DemoStep(
            100, f"{SUCCEEDS}: stack CREATE_COMPLETE", stack(SUCCEEDS, "CREATE_COMPLETE"),
            stack_event(SUCCEEDS, "CREATE_COMPLETE"),
        ),
        DemoStep(105, f"{SUCCEEDS}: AMI registered, tagged build_status=available", register_ami, ami_event),
        DemoStep(
            130, f"{SUCCEEDS}: build stack deleted (ParallelCluster cleans up)", delete_stack,
            stack_event(SUCCEEDS, "DELETE_COMPLETE"),
        ),
        DemoStep(
            170,
            f"{ROLLS_BACK}: stack ROLLBACK_COMPLETE",
            stack(ROLLS_BACK, "ROLLBACK_COMPLETE", ROLLBACK_REASON),
            stack_event(ROLLS_BACK, "ROLLBACK_COMPLETE", ROLLBACK_REASON),
        ),
    ]


def advance(
    fake: FakeAws,
    *,
    elapsed: float,
    done: int,
    region: str = DEMO_REGION,
    timeline: list[DemoStep] | None = None,
    publish: Callable[[Envelope], None] | None = None,
) -> int:
    """Apply the steps due by `elapsed` seconds that are not yet applied; return how many are applied now.

    With `publish`, each step's event is handed to it (the demo sends them to its SQS queue).
    """
    timeline = timeline if timeline is not None else steps(region=region)
    while done < len(timeline) and timeline[done].at_seconds <= elapsed:
        timeline[done].action(fake)
        if publish is not None:
            event = timeline[done].event(fake)
            if event is not None:
                publish(event)
        done += 1
    return done


def sqs_publisher(fake: FakeAws, *, queue_url: str, region: str = DEMO_REGION) -> Callable[[Envelope], None]:
    """Deliver events to the demo's queue, as EventBridge's SQS target would."""
    import boto3

    sqs = boto3.client(
        "sqs", region_name=region, endpoint_url=fake.endpoint_url,
        aws_access_key_id="demo", aws_secret_access_key="demo",
    )

    def publish(event: Envelope) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))

    return publish


def create_queue(fake: FakeAws, *, name: str = "statuscache-demo-events", region: str = DEMO_REGION) -> str:
    import boto3

    sqs = boto3.client(
        "sqs", region_name=region, endpoint_url=fake.endpoint_url,
        aws_access_key_id="demo", aws_secret_access_key="demo",
    )
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    return url


async def run_scenario(
    fake: FakeAws,
    *,
    stop: asyncio.Event,
    speed: float = 1.0,
    region: str = DEMO_REGION,
    publish: Callable[[Envelope], None] | None = None,
) -> None:
    """Play the timeline (`speed` times faster than real time), then idle until `stop` is set."""
    timeline = steps(region=region)
    loop = asyncio.get_running_loop()
    started = loop.time()
    done = 0
    log.info(
        "demo scenario started: %d steps over %.0f s at speed %g",
        len(timeline),
        timeline[-1].at_seconds,
        speed,
    )
    while not stop.is_set():
        if done == len(timeline):
            log.info("demo scenario complete: all %d steps applied", done)
            await stop.wait()
            break
        wait = timeline[done].at_seconds / speed - (loop.time() - started)
        if wait > 0 and await sleep_until_stopped(stop, wait):
            break
        # max(): float rounding must not leave a step that is due by the clock unapplied.
        elapsed = max((loop.time() - started) * speed, timeline[done].at_seconds)
        applied = advance(fake, elapsed=elapsed, done=done, region=region, timeline=timeline, publish=publish)
        for step in timeline[done:applied]:
            log.info("demo t+%.0fs %s", step.at_seconds, step.description)
        done = applied
    log.info("demo scenario stopped after %d of %d steps", done, len(timeline))


def curl_examples(*, base_url: str) -> list[str]:
    base = base_url.rstrip("/")
    return [
        f"curl -s '{base}/v3/images/custom/{image_id}?region={DEMO_REGION}'"
        for image_id in (SUCCEEDS, FINISHED, ROLLS_BACK)
    ]
