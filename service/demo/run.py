"""`statuscache demo`: the service against an in-process fake AWS, seeded with builds that move on their own.

Asked for by name only. Production code never imports this package, so a missing or broken credential
chain can never turn `serve` into this; here the fake AWS is the point, whatever credentials exist.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

from service import runner
from service.demo import scenario
from service.demo.fakeaws import FakeAws
from service.settings import Settings

log = logging.getLogger(__name__)

# Every service's endpoint goes to the fake: a per-service endpoint left over from the caller's shell
# (AWS_ENDPOINT_URL_S3=...) would send that service's calls elsewhere.
_ENDPOINT_PREFIX = "AWS_ENDPOINT_URL"


def start(settings: Settings) -> tuple[Settings, FakeAws, list[Coroutine[Any, Any, None]]]:
    """Start the fake AWS in-process, seed it and point this process's botocore at it.

    Returns the settings to serve with, the fake (to stop), and the scenario to run beside the service.
    """
    fake = FakeAws()
    fake.start()
    for name in [name for name in os.environ if name.startswith(_ENDPOINT_PREFIX)]:
        del os.environ[name]
    os.environ["AWS_ENDPOINT_URL"] = fake.endpoint_url
    # The fake accepts any signature; real credentials, when present, are harmless against it.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ["AWS_DEFAULT_REGION"] = scenario.DEMO_REGION
    image_ids = scenario.seed(fake, region=scenario.DEMO_REGION)
    queue_url = scenario.create_queue(fake, region=scenario.DEMO_REGION)
    # The scenario sends each step's EventBridge event to this queue, and the service consumes it.
    overrides: dict[str, Any] = {"regions": (scenario.DEMO_REGION,), "events_queue_urls": (queue_url,)}
    if "STATUSCACHE_RESYNC_SECONDS" not in os.environ:
        # Events bring the changes; reconciliation repairs what they miss, often enough to watch it.
        overrides["resync_seconds"] = 30.0
    log.warning(
        "DEMO: statuscache demo serves invented images from a local fake AWS (moto in-process at %s): %s. "
        "Nothing here is real AWS; `statuscache serve` runs against AWS.",
        fake.endpoint_url, ", ".join(image_ids),
    )
    publish = scenario.sqs_publisher(fake, queue_url=queue_url, region=scenario.DEMO_REGION)
    play = scenario.run_scenario(fake, stop=asyncio.Event(), publish=publish)
    return settings.with_overrides(**overrides), fake, [play]


def serve(settings: Settings) -> None:
    """The demo's whole life: fake AWS, API and poller in this process until uvicorn is told to stop."""
    runner.require_protection(settings)  # before the fake AWS starts: refused is refused at once
    for noisy in ("werkzeug", "moto"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    settings, fake, background = start(settings)
    for line in scenario.curl_examples(base_url=f"http://{settings.host}:{settings.port}"):
        log.warning("try: %s", line)
    try:
        runner.serve_app(settings.with_overrides(no_poll=False), background=background)
    finally:
        fake.stop()
