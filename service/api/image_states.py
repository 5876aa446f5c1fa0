"""GET /v3/image-states: every image of the served regions, now, in one answer: what the status board lists.

pcluster's ListImages pages by three filters that leave some images out (a stack being deleted or
updated is in none of them) and carry no Image Builder status or age, so the board would need a
describe per image. This is one read of the same rows /metrics reads, with the change sequence it was
read at: a client lists, then follows /v3/image-changes from `changeSeq` and misses nothing in between
(Kubernetes' list-then-watch). Remembered like a list page: dropped by any local write, kept at most
read_cache_seconds. `notYetListed` names the regions no reconcile pass has listed yet (service.store.listings).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api.compression import Compressor
from service.api.query import parse
from service.api.requests import region_from
from service.api.state import AppState
from service.domain.describe import iso_time
from service.runtime import Runtime
from service.store import queries, states
from service.support.singleflight import SingleFlight

PATH = "/v3/image-states"


def state_json(image: states.ImageState) -> dict[str, Any]:
    item: dict[str, Any] = {
        "imageId": image.image_id,
        "region": image.region,
        "imageBuildStatus": image.build_status,
        "cloudformationStackStatus": image.stack_status,
        "imagebuilderImageStatus": image.imagebuilder_status,
        "version": image.pcluster_version,
        "creationTime": iso_time(image.created) if image.created else None,
        "statusSince": iso_time(image.status_since) if image.status_since else None,
        "changeSeq": image.seq,
    }
    # Absent values are omitted, as in pcluster's documents.
    return {key: value for key, value in item.items() if value is not None}


class ImageStates:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._answers: dict[tuple[str, ...], tuple[int, float, bytes, str]] = {}
        self._building: SingleFlight[tuple[str, ...], tuple[bytes, str]] = SingleFlight()
        self._compressor = Compressor()

    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        asked = parse(request.scope["query_string"]).get("region")
        regions = (region_from(asked, runtime.settings),) if asked else runtime.settings.regions
        body, etag = await self._answer(runtime, regions)
        return self._compressor.answer(request, body, etag=etag, headers={"Cache-Control": "no-cache"})

    async def _answer(self, runtime: Runtime, regions: tuple[str, ...]) -> tuple[bytes, str]:
        remembered = self._answers.get(regions)
        generation = runtime.lookup.generation
        if (
            remembered is not None
            and remembered[0] == generation
            and time.monotonic() - remembered[1] < runtime.settings.read_cache_seconds
        ):
            return remembered[2], remembered[3]
        body, etag = await self._building.run(regions, lambda: _build(runtime, regions))
        # One entry per set of regions asked (at most the configured ones and each alone).
        self._answers[regions] = (generation, time.monotonic(), body, etag)
        return body, etag


async def _build(runtime: Runtime, regions: tuple[str, ...]) -> tuple[bytes, str]:
    # The sequence is read first: whatever changes after it is in the stream that follows from it.
    seq = await queries.latest_seq(runtime.engine)
    snapshot = await states.read(runtime.engine, regions=regions)
    listed = await runtime.cache.listings(regions)
    # Regions no reconcile pass has listed yet: their images here are only those events and describes
    # brought, not their fleet (the board says "not yet listed", not "0 images").
    unlisted = [region for region in regions if region not in listed]
    body = orjson.dumps(
        {
            "regions": list(regions),
            "changeSeq": seq,
            "images": [state_json(image) for image in snapshot.existing],
            "notYetListed": unlisted,
        }
    )
    count, versions = snapshot.fingerprint
    return body, f'"{seq}.{count}.{versions}.{"+".join(regions)}.{"+".join(unlisted)}"'
