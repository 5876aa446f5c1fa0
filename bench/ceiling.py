"""The ceiling: a bare Starlette route on the same uvicorn, answering a describe-sized JSON document from memory.

Served as `python -m uvicorn bench.ceiling:app`. The body is the file named by BENCH_CEILING_BODY (the bench
writes a real cached describe answer there), else a built-in document of the same shape and size.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY_ENV = "BENCH_CEILING_BODY"
JSON = "application/json"


def default_body() -> bytes:
    """A stack-path describe document with a signed URL, about the size of a real one (~1.4 KB)."""
    image_id = "bench-ubuntu2204-gpu-00007"
    tags = [
        {"key": "parallelcluster:image_id", "value": image_id},
        {"key": "parallelcluster:version", "value": "3.9.0"},
        {"key": "parallelcluster:image_name", "value": image_id},
        {"key": "parallelcluster:s3_bucket", "value": "parallelcluster-6f1f0e7c4b2d9a35-v1-do-not-delete"},
        {"key": "parallelcluster:s3_image_dir", "value": f"parallelcluster/3.9.0/images/{image_id}-9f8e7d6c5b4a3210"},
        {"key": "team", "value": "ml-infra"},
    ]
    return orjson.dumps(
        {
            "imageConfiguration": {
                "url": "https://parallelcluster-6f1f0e7c4b2d9a35-v1-do-not-delete.s3.amazonaws.com/parallelcluster/"
                f"3.9.0/images/{image_id}-9f8e7d6c5b4a3210/configs/image-config.yaml?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240501%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date="
                "20240501T120000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature="
                + "0" * 64
            },
            "cloudformationStackArn": f"arn:aws:cloudformation:us-east-1:123456789012:stack/{image_id}/"
            "5d3c2b1a-1e2b-11ef-9a3c-0a8f3e6b1c2d",
            "cloudformationStackCreationTime": "2024-05-01T11:53:00.000Z",
            "cloudformationStackStatus": "CREATE_IN_PROGRESS",
            "cloudformationStackTags": tags,
            "imageBuildLogsArn": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/imagebuilder/"
            f"ParallelClusterImage-{image_id}",
            "imageBuildStatus": "BUILD_IN_PROGRESS",
            "imageId": image_id,
            "imagebuilderImageStatus": "BUILDING",
            "region": "us-east-1",
            "version": "3.9.0",
        }
    )


def _body() -> bytes:
    path = os.environ.get(BODY_ENV)
    return Path(path).read_bytes() if path else default_body()


BODY = _body()


async def describe(request: Request) -> Response:
    return Response(BODY, media_type=JSON)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


# The same path shape as the service, so wrk sends the very same requests to both.
app = Starlette(
    routes=[
        Route("/v3/images/custom/{image_id}", describe, methods=["GET"]),
        Route("/v3/images/custom", describe, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", healthz, methods=["GET"]),
    ]
)
