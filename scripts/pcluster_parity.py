"""Parity with the real ParallelCluster API: the same AWS state, described by pcluster and by statuscache.

Usage (from the repository root, after `make install`):

    python3 -m venv /tmp/pcvenv && /tmp/pcvenv/bin/pip install aws-parallelcluster
    .venv/bin/python scripts/pcluster_parity.py --pcluster-python /tmp/pcvenv/bin/python

It starts the local fake AWS (moto + the Image Builder fake), builds a set of image states, then asks
pcluster's own API (its Flask app, `pcluster.api.flask_app`, in its own virtualenv) and a real
`statuscache serve` process (live on the first request, from the cache on the second, and after a
reconciliation pass) for each image, and compares status codes and bodies. The pre-signed URL is
compared without its query string (signature and expiry differ by design). Exit status 1 on any
difference.
"""

from __future__ import annotations

import argparse
import json
import os
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

from service.demo.fakeaws import FakeAws

REGION = "us-east-1"

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
    print("parity: all answers the same" if not failures else f"parity: {failures} answers differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
