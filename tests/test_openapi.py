"""The OpenAPI document: valid, complete (every route the app serves), served as the file, and true.

"True" is schemathesis' verdict: generated requests (valid and invalid) against a live service on the fake
AWS, with no server errors, and status codes, content types and bodies as the document says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from service.api import openapi
from service.api.app import create_app
from service.demo.fakeaws import FakeAws
from service.settings import Settings
from tests.conftest import REGION, LiveService

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "service" / "api" / "openapi.json"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def load_document() -> dict[str, object]:
    document: dict[str, object] = json.loads(DOCUMENT_PATH.read_text())
    return document


def test_the_document_is_valid_openapi() -> None:
    validate(load_document())


def template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_the_app_serves_is_documented_and_nothing_else() -> None:
    app = create_app(Settings())
    served = {
        (template(route.path), method.lower())
        for route in app.starlette.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    # The authentication middleware answers /v3/session itself (with a tokens file configured).
    from service.api.auth import SESSION_PATH

    served |= {(SESSION_PATH, "post"), (SESSION_PATH, "delete")}
    paths = load_document()["paths"]
    assert isinstance(paths, dict)
    documented = {(template(path), method) for path, operations in paths.items() for method in operations}
    assert served == documented


def test_pclusters_operations_keep_their_ids_and_schema_names() -> None:
    paths = load_document()["paths"]
    assert isinstance(paths, dict)
    describe = paths["/v3/images/custom/{imageId}"]["get"]
    listing = paths["/v3/images/custom"]["get"]
    assert (describe["operationId"], listing["operationId"]) == ("describe_image", "list_images")

    def schema_of(operation: dict[str, object], status: str) -> str:
        responses = operation["responses"]
        assert isinstance(responses, dict)
        reference: str = responses[status]["content"]["application/json"]["schema"]["$ref"]
        return reference.rsplit("/", 1)[1]

    assert schema_of(describe, "200") == "DescribeImageResponseContent"
    assert schema_of(listing, "200") == "ListImagesResponseContent"
    for status, name in (
        ("400", "BadRequestExceptionResponseContent"),
        ("401", "UnauthorizedClientErrorResponseContent"),
        ("429", "LimitExceededExceptionResponseContent"),
        ("500", "InternalServiceExceptionResponseContent"),
    ):
        assert schema_of(describe, status) == schema_of(listing, status) == name
    assert schema_of(describe, "404") == "NotFoundExceptionResponseContent"


def test_the_served_document_is_the_file_in_the_package() -> None:
    assert json.loads(openapi.document()) == load_document()


# --- schemathesis against a live service --------------------------------------------------------------


def run_operation(
    schema: schemathesis.BaseSchema, method: str, path: str, *, base_url: str, modes: list[GenerationMode]
) -> None:
    operation = schema[path][method]
    for mode in modes:

        @hypothesis_settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=base_url, checks=CHECKS)

        check()


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_the_live_service(live_service: LiveService, aws_state: FakeAws) -> None:
    # Real answers to validate, besides the generated misses: every describe branch schemathesis can reach.
    aws_state.create_ami(region=REGION, image_id="seen-ami")
    aws_state.create_image_stack(region=REGION, image_id="seen-building", imagebuilder_status="BUILDING")
    aws_state.create_image_stack(region=REGION, image_id="seen-failed", status="ROLLBACK_COMPLETE", reason="no")
    schema = schemathesis.openapi.from_dict(load_document())
    base = live_service.base_url
    for image_id in ("seen-ami", "seen-building", "seen-failed"):
        schema["/v3/images/custom/{imageId}"]["GET"].Case(path_parameters={"imageId": image_id}).call_and_validate(
            base_url=base, checks=CHECKS
        )
        history = schema["/v3/images/custom/{imageId}/history"]["GET"]
        history.Case(path_parameters={"imageId": image_id}, query={"limit": 1}).call_and_validate(
            base_url=base, checks=CHECKS
        )
    for status in ("AVAILABLE", "PENDING", "FAILED"):
        schema["/v3/images/custom"]["GET"].Case(query={"imageStatus": status}).call_and_validate(
            base_url=base, checks=CHECKS
        )
    both = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for path in (
        "/v3/images/custom/{imageId}", "/v3/images/custom", "/v3/images/custom/{imageId}/history",
        "/v3/image-transitions", "/v3/image-builds", "/v3/image-builds/summary", "/v3/image-states",
    ):
        run_operation(schema, "GET", path, base_url=base, modes=both)
    for path in ("/healthz", "/readyz", "/stats", "/openapi.json", "/metrics", "/", "/board/{name}"):
        run_operation(schema, "GET", path, base_url=base, modes=[GenerationMode.POSITIVE])

    # The change stream never ends while the service runs: asked once shutdown has begun, every stream
    # answers its headers and ends at once, and everything before the stream (the input checks) still runs.
    # Positive inputs only: its Last-Event-ID checks belong to the stream's own work (the property test in
    # tests/test_requests_property.py throws bad values at its other parameters).
    live_service.begin_shutdown()
    assert httpx.get(f"{base}/readyz").status_code == 503
    run_operation(schema, "GET", "/v3/image-changes", base_url=base, modes=[GenerationMode.POSITIVE])
