"""What the process holds grows with the images, not with their changes (issue 19, item 6)."""

from __future__ import annotations

import pytest

from service.api.describe import PreparedAnswers
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from tests.conftest import REGION
from tests.test_notify import image_change

pytestmark = pytest.mark.asyncio

STATUSES = ("UPDATE_IN_PROGRESS", "UPDATE_COMPLETE")


async def test_prepared_describe_answers_hold_one_version_per_image(runtime: Runtime, aws_state: FakeAws) -> None:
    """Every describe of a new version prepares its answer; the last version's is replaced, not kept beside it (it
    was: ~1.5 KB for every change described, until 20,000 of them emptied the memo)."""
    answers = PreparedAnswers()
    images = [f"churn-{n}" for n in range(3)]
    versions = []
    for minute in range(40):
        await runtime.cache.apply_many([image_change(image, STATUSES[minute % 2], minute=minute) for image in images])
        for image_id in images:
            image = await runtime.cache.read(region=REGION, image_id=image_id)
            assert image is not None
            prepared = await answers.prepare(runtime, image)
            assert prepared.version == image.version and answers.get(runtime, image) is prepared
            versions.append(image)
    assert len(answers) == len(images)
    # A describe of a past moment prepares the old version's answer, and does not push the newest one out.
    oldest, newest = versions[0], versions[-len(images)]  # the first and the last version of one image
    await answers.prepare(runtime, oldest)
    assert answers.get(runtime, newest) is not None and answers.get(runtime, oldest) is None
    assert len(answers) == len(images)
