"""python -m bench.soak: memory under churn. One `serve` process (poller included) consumes Image Builder state
changes from SQS at a steady rate while readers describe and list and a follower reads the change stream; its RSS
is sampled throughout. Flat means the last third's median RSS within 3% of the middle third's.

    .venv/bin/python -m bench.soak [--minutes 5] [--rate 50] [--images 100]

Also checked: every event sent was applied (the consumer's counts), every change was streamed to the follower
(its last event id is the newest change sequence), and no read failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import httpx

from bench import events, servers
from bench.fake import TimedFakeAws

STATES = ("BUILDING", "TESTING")
TARGET = 1.03


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Follower(threading.Thread):
    """Reads the change stream from its start, counting events and keeping the last id; reconnects with it."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.received = 0
        self.last_id = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                params = {"region": events.REGION, "lastEventId": str(self.last_id)}
                with httpx.stream("GET", f"{self.base}/v3/image-changes", params=params, timeout=30) as response:
                    for line in response.iter_lines():
                        if self.stop.is_set():
                            return
                        if line.startswith("id:"):
                            self.last_id = int(line[3:].strip())
                            self.received += 1
            time.sleep(0.1)


class Readers(threading.Thread):
    """Describes random images and reads the list, one request after another, counting answers and failures."""

    def __init__(self, base: str, image_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.image_ids = image_ids
        self.answered = 0
        self.failed = 0
        # The first failure, for the report.
        self.first_failure = ""
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self.stop.is_set():
                if random.random() < 0.8:
                    path, params = f"/v3/images/custom/{random.choice(self.image_ids)}", {"region": events.REGION}
                else:
                    path, params = "/v3/images/custom", {"region": events.REGION, "imageStatus": "PENDING"}
                try:
                    response = client.get(path, params=params)
                    ok = response.status_code == 200
                    failure = f"{path}: {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, failure = False, f"{path}: {exc!r}"
                if not ok and not self.first_failure:
                    self.first_failure = failure
                self.answered += ok
                self.failed += not ok
                time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0, help="events a second")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args(argv)
    # This process's boto3 (the queue, the events) talks to the fake with made-up credentials.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=events.REGION)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-soak-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        queue_url = events.create_queue(fake, "soak")
        image_ids = events.prepare_images(fake, count=args.images, prefix="soak")
        service = stack.enter_context(servers.start_serve(
            name="soak", database_url=f"sqlite+aiosqlite:///{workdir / 'soak.db'}", aws_endpoint=fake.endpoint_url,
            log_dir=workdir, poll=True,
            extra_env={"STATUSCACHE_EVENTS_QUEUE_URL": queue_url, "STATUSCACHE_RESYNC_SECONDS": "3600"},
        ))  # fmt: skip
        follower, readers = Follower(service.base), Readers(service.base, image_ids)
        follower.start()
        readers.start()
        sqs = boto3.client("sqs", region_name=events.REGION, endpoint_url=fake.endpoint_url)
        arns = [fake.imagebuilder_arn(region=events.REGION, image_id=image_id) for image_id in image_ids]
        samples: list[tuple[float, float]] = []
        sent = 0
        began = time.monotonic()
        ends = began + args.minutes * 60
        next_sample = began
        progress(f"soak: {args.rate:g} events/s for {args.minutes:g} min over {args.images} images")
        while (now := time.monotonic()) < ends:
            if now >= next_sample:
                samples.append((now - began, service.rss_mb()))
                next_sample += 2.0
            due = int((now - began) * args.rate)
            while sent < due:
                arn = arns[sent % len(arns)]
                status = STATES[(sent // len(arns)) % 2]
                fake.put_imagebuilder_image(arn, status=status)
                sqs.send_message(QueueUrl=queue_url, MessageBody=events._envelope(
                    "EC2 Image Builder Image State Change", "aws.imagebuilder", [arn], {"state": {"status": status}}
                ))  # fmt: skip
                sent += 1
            time.sleep(0.01)
        # Everything sent is applied, and streamed, within a while.
        deadline = time.monotonic() + 60
        counts: dict[str, int] = {}
        newest = -1
        while time.monotonic() < deadline:
            stats = httpx.get(f"{service.base}/stats", timeout=10).json()
            counts = stats.get("events", {})
            states = httpx.get(f"{service.base}/v3/image-states", params={"region": events.REGION}, timeout=10)
            newest = int(states.json()["changeSeq"])
            if counts.get("deleted", 0) >= sent and follower.last_id >= newest:
                break
            time.sleep(0.5)
        follower.stop.set()
        readers.stop.set()
        readers.join(timeout=15)
    thirds = len(samples) // 3
    middle = statistics.median(rss for _, rss in samples[thirds : 2 * thirds])
    last = statistics.median(rss for _, rss in samples[2 * thirds :])
    first = statistics.median(rss for _, rss in samples[:thirds])
    ratio = last / middle
    print(f"soak: {sent} events in {args.minutes:g} min ({args.rate:g}/s) over {args.images} images, readers and a "
          f"change-stream follower")  # fmt: skip
    print(f"  RSS median by third: {first:.1f} / {middle:.1f} / {last:.1f} MB; last/middle {ratio:.3f} "
          f"({'flat' if ratio <= TARGET else 'GROWING'}: target <= {TARGET})")  # fmt: skip
    print(f"  consumer: {counts}; newest change {newest}, follower's last {follower.last_id} "
          f"({follower.received} events streamed)")  # fmt: skip
    print(f"  reads: {readers.answered} answered, {readers.failed} failed"
          + (f" (the first: {readers.first_failure})" if readers.first_failure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
