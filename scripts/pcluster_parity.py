"""Parity with the real ParallelCluster package: the same AWS state, described by pcluster and by statuscache.

Usage (from the repository root, after `make install`):

    python3 -m venv /tmp/pcvenv && /tmp/pcvenv/bin/pip install aws-parallelcluster
    .venv/bin/python scripts/pcluster_parity.py --pcluster-python /tmp/pcvenv/bin/python

It starts the local fake AWS (moto + the Image Builder fake), builds a set of image states, then compares,
for each image:

1. the API: pcluster's own (its Flask app, `pcluster.api.flask_app`) and a real `statuscache serve` process
   (live on the first request, from the cache on the second, and after a reconciliation pass): status
   codes and bodies;
2. the CLI: the `pcluster` command (`describe-image`, and `list-images` for every status) and
   `statuscache describe-image` / `list-images` against a second, fresh `statuscache serve` (live first,
   then from the cache): exit codes and stdout, byte for byte;
3. the library: `pcluster.lib.describe_image` and `service.client.describe_image` (from the cache, then
   live on a third fresh server): values, with pcluster's camelCase strings put in the seed's Python shape
   (`service.client.shapes.pythonic`), and errors by exception name and message;
4. the OpenAPI documents: the schemas ours reuses are pcluster's unchanged, describe's and list's parameters and
   responses are pcluster's, and schemathesis run from *pcluster's* document (valid and invalid requests to
   describe_image and list_images) finds nothing against a fresh `statuscache serve`: what a client generated for
   the ParallelCluster API relies on.

The pre-signed URL is compared without its query string (signature and expiry differ by design). Known,
documented differences are listed as such, not counted. Exit status 1 on any other difference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.client import ApiException, Client
from service.client.shapes import pythonic
from service.demo.fakeaws import FakeAws

REGION = "us-east-1"
PCLUSTER_STATUSES = ("AVAILABLE", "PENDING", "FAILED")

PCLUSTER_SCRIPT = r"""
import json, sys
from pcluster.api.flask_app import ParallelClusterFlaskApp
client = ParallelClusterFlaskApp().flask_app.test_client()
out = {}
for image_id in json.loads(sys.argv[1]):
    response = client.get(f"/v3/images/custom/{image_id}", query_string={"region": sys.argv[2]})
    out[image_id] = [response.status_code, response.get_json()]
print(json.dumps(out))
"""


PCLUSTER_LIB_SCRIPT = r"""
import json, sys
import pcluster.lib as pc
out = {}
for image_id in json.loads(sys.argv[1]):
    try:
        out[image_id] = ["ok", pc.describe_image(image_id=image_id, region=sys.argv[2])]
    except Exception as exc:
        content = getattr(exc, "content", None)
        message = getattr(content, "message", None) or (getattr(exc, "data", None) or {}).get("message") or str(exc)
        out[image_id] = ["error", type(exc).__name__, message]
print(json.dumps(out))
"""


def build_states(fake: FakeAws) -> list[str]:
    """Image states covering every branch of describe; returns the ids to ask about."""
    fake.create_ami(region=REGION, image_id="par-ami")
    fake.create_ami(region=REGION, image_id="par-ami-nodesc", description=None, architecture="arm64")
    fake.create_image_stack(region=REGION, image_id="par-building", imagebuilder_status="BUILDING")
    fake.create_image_stack(region=REGION, image_id="par-early", with_image_resource=False)
    fake.create_image_stack(region=REGION, image_id="par-no-ib-image", imagebuilder_status=None)
    fake.create_image_stack(
        region=REGION, image_id="par-rollback", status="ROLLBACK_COMPLETE",
        reason="The following resource(s) failed to create: [ParallelClusterImage]. Rollback requested by user.",
        imagebuilder_status="FAILED", imagebuilder_reason="Image Build failed: step Build failed",
    )
    fake.create_image_stack(
        region=REGION, image_id="par-complete", status="CREATE_COMPLETE", imagebuilder_status="AVAILABLE"
    )
    fake.create_image_stack(region=REGION, image_id="par-both", status="DELETE_FAILED", reason="busy")
    fake.create_ami(region=REGION, image_id="par-both")
    fake.create_image_stack(
        region=REGION, image_id="par-deleting", status="DELETE_IN_PROGRESS", reason="User Initiated"
    )
    fake.create_image_stack(region=REGION, image_id="par-update-rollback", status="UPDATE_ROLLBACK_COMPLETE")
    fake.create_image_stack(region=REGION, image_id="par-gone-bucket", bucket="par-bucket-deleted")
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=fake.endpoint_url)
    for item in s3.list_objects_v2(Bucket="par-bucket-deleted").get("Contents", []):
        s3.delete_object(Bucket="par-bucket-deleted", Key=item["Key"])
    s3.delete_bucket(Bucket="par-bucket-deleted")
    return [
        "par-ami", "par-ami-nodesc", "par-building", "par-early", "par-no-ib-image", "par-rollback",
        "par-complete", "par-both", "par-deleting", "par-update-rollback", "par-gone-bucket", "par-never-built",
        "1-bad-id", "bad_id",
    ]


def unsigned_text(text: str) -> str:
    """CLI output with every pre-signed URL's query string (signature, expiry) removed, in place."""
    return re.sub(r'("url": "[^"?]*)\?[^"]*"', r'\1"', text)


def sorted_list_output(text: str) -> str:
    """A list-images page printed with its images sorted by id: pcluster prints AWS's order, we print id order."""
    try:
        page = json.loads(text)
    except ValueError:
        return text
    if isinstance(page, dict) and isinstance(page.get("images"), list):
        page["images"] = sorted(page["images"], key=lambda image: image.get("imageId", ""))
        return json.dumps(page, indent=2) + "\n"
    return text


def cli(argv: list[str], *, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, done.stdout


def start_server(port: int, serve_env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "service", "serve", "--no-poll", "--port", str(port)]
    server = subprocess.Popen(argv, env=serve_env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return server


def client_answer(client: Client, image_id: str) -> list[Any]:
    try:
        return ["ok", comparable_python(client.describe_image(image_id, REGION))]
    except ApiException as exc:
        return ["error", type(exc).__name__, exc.message]


def comparable_python(document: Any) -> Any:
    url = document.get("image_configuration", {}).get("url", "") if isinstance(document, dict) else ""
    if url and url != "NOT_AVAILABLE":
        parts = urlsplit(url)
        document = {**document, "image_configuration": {"url": f"{parts.scheme}://{parts.netloc}{parts.path}"}}
    return document


def known_lib_difference(image_id: str, theirs: list[Any], ours: list[Any]) -> str | None:
    """Where pcluster.lib and the seed's documented client differ on purpose, say why."""
    if theirs[:2] == ["error", "ParameterException"] and ours[:2] == ["error", "BadRequestException"]:
        # pcluster.lib checks the id as its CLI does and raises the CLI's ParameterException in the CLI's words;
        # the client raises the API's BadRequestException with the API's message (pcluster's API says the same).
        if theirs[2] == ours[2] + " - 'image-id'":
            return "pcluster.lib raises its CLI's ParameterException; ours the API's BadRequestException"
    return None


def compare_openapi(pcluster_python: str, *, workdir: str, serve_env: dict[str, str]) -> int:
    """Our document reuses pcluster's schemas unchanged, and the service passes schemathesis run from *pcluster's*
    document (describe_image and list_images): what a client generated for the ParallelCluster API relies on."""
    import schemathesis
    import yaml
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    where = subprocess.run(
        [pcluster_python, "-c", "import os, pcluster; print(os.path.dirname(pcluster.__file__))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    theirs = yaml.safe_load((Path(where) / "api" / "openapi" / "openapi.yaml").read_text())
    ours = json.loads((Path(__file__).resolve().parent.parent / "service" / "api" / "openapi.json").read_text())
    failures = 0
    print("\nOpenAPI: our document against pcluster's")
    for name, schema in ours["components"]["schemas"].items():
        if name in theirs["components"]["schemas"]:
            pcluster_schema = {k: v for k, v in theirs["components"]["schemas"][name].items() if k != "example"}
            same = schema == pcluster_schema
            failures += not same
            print(f"  schema {name:<45} {'same as pcluster' if same else 'DIFFERENT'}")
    for path in ("/v3/images/custom/{imageId}", "/v3/images/custom"):
        theirs_operation, ours_operation = theirs["paths"][path]["get"], ours["paths"][path]["get"]
        pcluster_parameters = {parameter["name"]: parameter for parameter in theirs_operation["parameters"]}
        for parameter in ours_operation["parameters"]:
            if parameter["name"] in pcluster_parameters:
                theirs_parameter = pcluster_parameters.pop(parameter["name"])
                # The one addition: an id is a stack name, so at most 128 characters.
                extra = {k: v for k, v in parameter["schema"].items() if k not in theirs_parameter["schema"]}
                same = {**parameter, "schema": theirs_parameter["schema"]} == theirs_parameter and extra in (
                    {}, {"maxLength": 128},
                )  # fmt: skip
                failures += not same
                print(f"  {ours_operation['operationId']:<14} parameter {parameter['name']:<12} "
                      f"{'same as pcluster' + (' (plus maxLength 128)' if extra else '') if same else 'DIFFERENT'}")
        for status, response in theirs_operation["responses"].items():
            same = ours_operation["responses"].get(status, {}).get("content") == response.get("content")
            failures += not same
            verdict = "same as pcluster" if same else "DIFFERENT"
            print(f"  {ours_operation['operationId']:<14} response {status:<13} {verdict}")
        failures += bool(pcluster_parameters)

    port = 18768
    fresh = {**serve_env, "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/parity-openapi.db",
             "STATUSCACHE_LIVE_LOOKUPS_PER_SECOND": "10000"}  # fmt: skip
    server = start_server(port, fresh)
    # Listed, as a deployment is once its first reconcile pass has run: before it, a list answers 503 (a region
    # never listed has no list to give), which pcluster's document does not name.
    subprocess.run([sys.executable, "-m", "service", "sync", "--once"], env=fresh, check=True, capture_output=True)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_dict(theirs)
    try:
        for path in ("/v3/images/custom/{imageId}", "/v3/images/custom"):
            operation = schema[path]["GET"]
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

                @hypothesis_settings(max_examples=100, deadline=None, database=None,
                                     suppress_health_check=list(HealthCheck))  # fmt: skip
                @given(case=operation.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    case.call_and_validate(base_url=f"http://127.0.0.1:{port}", checks=checks)

                try:
                    check()
                    print(f"  schemathesis from pcluster's document, {path} ({mode.value}): no findings")
                except Exception as exc:
                    failures += 1
                    print(f"  schemathesis from pcluster's document, {path} ({mode.value}): FOUND {exc}")
    finally:
        server.terminate()
        server.wait(timeout=15)
    return failures


def comparable(body: Any) -> Any:
    if isinstance(body, dict) and isinstance(body.get("imageConfiguration"), dict):
        url = body["imageConfiguration"].get("url", "")
        if url != "NOT_AVAILABLE":
            parts = urlsplit(url)
            body = {**body, "imageConfiguration": {"url": f"{parts.scheme}://{parts.netloc}{parts.path}"}}
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcluster-python", required=True, help="python of a virtualenv with aws-parallelcluster")
    parser.add_argument("--show", action="append", default=[], help="print pcluster's answer for this image id")
    args = parser.parse_args()
    with FakeAws() as fake, tempfile.TemporaryDirectory() as workdir:
        env = {
            **{key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "STATUSCACHE_"))},
            "AWS_ENDPOINT_URL": fake.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }
        os.environ.update({key: env[key] for key in env if key.startswith("AWS_")})
        ids = build_states(fake)

        pcluster = subprocess.run(
            [args.pcluster_python, "-c", PCLUSTER_SCRIPT, json.dumps(ids), REGION],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )
        expected: dict[str, list[Any]] = json.loads(pcluster.stdout.strip().splitlines()[-1])

        port = 18765
        serve_env = {
            **env,
            "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/parity.db",
            "STATUSCACHE_REGIONS": REGION,
            "STATUSCACHE_LOG_LEVEL": "WARNING",
            # One client asks for every image live in a row: the per-caller share of live lookups (10 a second)
            # is not what this compares, so it must not answer 429 on a fast machine.
            "STATUSCACHE_LIVE_LOOKUPS_PER_CALLER_PER_SECOND": "1000",
            "STATUSCACHE_LIVE_LOOKUPS_PER_SECOND": "1000",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--no-poll", "--port", str(port)], env=serve_env
        )
        failures = 0
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            answers: dict[str, list[tuple[int, Any, str]]] = {image_id: [] for image_id in ids}
            for _round in ("live", "cached"):
                for image_id in ids:
                    response = httpx.get(f"{base}/v3/images/custom/{image_id}", params={"region": REGION})
                    answers[image_id].append(
                        (response.status_code, response.json(), response.headers.get("x-cache", ""))
                    )
            subprocess.run(
                [sys.executable, "-m", "service", "sync", "--once"], env=serve_env, check=True, capture_output=True
            )
            for image_id in ids:
                response = httpx.get(f"{base}/v3/images/custom/{image_id}", params={"region": REGION})
                answers[image_id].append((response.status_code, response.json(), "after reconcile"))
        finally:
            server.terminate()
            server.wait(timeout=15)

        print(f"{'image id':<22} {'pcluster':>8}  statuscache (live / cached / after reconcile)")
        for image_id in ids:
            status, body = expected[image_id]
            results = []
            for got_status, got_body, _label in answers[image_id]:
                same = got_status == status and comparable(got_body) == comparable(body)
                results.append(f"{got_status} {'same' if same else 'DIFFERENT'}")
                if not same:
                    failures += 1
                    print(f"  {image_id}: pcluster {status} {json.dumps(body, sort_keys=True)}")
                    print(f"  {image_id}: statuscache {got_status} {json.dumps(got_body, sort_keys=True)}")
            print(f"{image_id:<22} {status:>8}  " + " / ".join(results))
            if image_id in args.show:
                print(json.dumps(body, indent=1, sort_keys=True))
        pcluster_cli = str(Path(args.pcluster_python).parent / "pcluster")
        failures += compare_clis(ids, pcluster_cli, workdir=workdir, env=env, serve_env=serve_env)
        failures += compare_libraries(ids, args.pcluster_python, workdir=workdir, env=env, serve_env=serve_env)
        failures += compare_openapi(args.pcluster_python, workdir=workdir, serve_env=serve_env)
    print("parity: all answers the same" if not failures else f"parity: {failures} answers differ")
    return 1 if failures else 0


def compare_clis(
    ids: list[str], pcluster_cli: str, *, workdir: str, env: dict[str, str], serve_env: dict[str, str]
) -> int:
    """`pcluster` and `statuscache` CLIs on the same states: exit codes and stdout, byte for byte."""
    port = 18766
    fresh = {**serve_env, "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/parity-cli.db"}
    client_env = {**env, "STATUSCACHE_URL": f"http://127.0.0.1:{port}"}
    theirs = {
        image_id: cli([pcluster_cli, "describe-image", "-i", image_id, "-r", REGION], env=env) for image_id in ids
    }
    server = start_server(port, fresh)
    try:
        ours: dict[str, list[tuple[int, str]]] = {image_id: [] for image_id in ids}
        for _round in ("live", "cached"):
            for image_id in ids:
                argv = [sys.executable, "-m", "service", "describe-image", "-i", image_id, "-r", REGION]
                ours[image_id].append(cli(argv, env=client_env))
        # list-images answers from the cache: fill it as a deployment would, with a reconcile pass.
        subprocess.run([sys.executable, "-m", "service", "sync", "--once"], env=fresh, check=True, capture_output=True)
        lists = {
            status: (
                cli([pcluster_cli, "list-images", "--image-status", status, "-r", REGION], env=env),
                cli([sys.executable, "-m", "service", "list-images", "--image-status", status, "-r", REGION],
                    env=client_env),
            )
            for status in PCLUSTER_STATUSES
        }  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=15)
    failures = 0
    print(f"\n{'image id':<22} {'pcluster CLI':>12}  statuscache CLI (live / cached): exit code and stdout")
    for image_id in ids:
        code, out = theirs[image_id]
        results = []
        for got_code, got_out in ours[image_id]:
            same = got_code == code and unsigned_text(got_out) == unsigned_text(out)
            results.append(f"exit {got_code} {'same' if same else 'DIFFERENT'}")
            if not same:
                failures += 1
                print(f"  pcluster (exit {code}):\n{out}  statuscache (exit {got_code}):\n{got_out}")
        print(f"{image_id:<22} {'exit ' + str(code):>12}  " + " / ".join(results))
    for status, ((code, out), (got_code, got_out)) in lists.items():
        same_text = unsigned_text(got_out) == unsigned_text(out)
        same = got_code == code and sorted_list_output(got_out) == sorted_list_output(out)
        note = "byte for byte" if same_text else "same images, listed by id (pcluster lists in AWS's order)"
        print(f"list-images {status:<10} {'exit ' + str(code):>12}  exit {got_code} "
              f"{('same, ' + note) if same else 'DIFFERENT'}")  # fmt: skip
        if not same:
            failures += 1
            print(f"  pcluster (exit {code}):\n{out}  statuscache (exit {got_code}):\n{got_out}")
    return failures


def compare_libraries(
    ids: list[str], pcluster_python: str, *, workdir: str, env: dict[str, str], serve_env: dict[str, str]
) -> int:
    """pcluster.lib.describe_image and service.client.describe_image, from a fresh cache (live) and again."""
    done = subprocess.run(
        [pcluster_python, "-c", PCLUSTER_LIB_SCRIPT, json.dumps(ids), REGION],
        env=env, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    theirs: dict[str, list[Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    port = 18767
    fresh = {**serve_env, "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/parity-lib.db"}
    server = start_server(port, fresh)
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            ours = {image_id: [client_answer(client, image_id), client_answer(client, image_id)] for image_id in ids}
    finally:
        server.terminate()
        server.wait(timeout=15)
    failures = 0
    print(f"\n{'image id':<22} {'pcluster.lib':>24}  service.client (live / cached)")
    for image_id in ids:
        answer = theirs[image_id]
        expected = ["ok", comparable_python(pythonic(answer[1]))] if answer[0] == "ok" else answer
        results = []
        for got in ours[image_id]:
            known = known_lib_difference(image_id, expected, got)
            if got == expected:
                results.append("same")
            elif known:
                results.append(f"known: {known}")
            else:
                failures += 1
                results.append("DIFFERENT")
                print(f"  {image_id}: pcluster.lib {json.dumps(expected, default=str, sort_keys=True)}")
                print(f"  {image_id}: service.client {json.dumps(got, default=str, sort_keys=True)}")
        label = "ok" if answer[0] == "ok" else answer[1]
        print(f"{image_id:<22} {label:>24}  " + " / ".join(results))
    return failures


if __name__ == "__main__":
    sys.exit(main())
