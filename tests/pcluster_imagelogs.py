"""Run in a venv with aws-parallelcluster and its generated client (`pcluster_client`), never in the project's.

Asks the three image log operations of both: `pcluster.lib` (calling the fake AWS, as the pcluster CLI does) and
ParallelCluster's generated client `ImageLogsApi` (calling statuscache at argv's URL). Prints, per call, the
status, the JSON body and the X-Cache header, as JSON. Used by tests/test_imagelogs_parity.py.
"""

import json
import sys

import pcluster.lib as pcluster
import pcluster_client
from pcluster_client.api import image_logs_api


def library(operation: str, params: dict) -> dict:
    try:
        return {"status": 200, "body": getattr(pcluster, operation)(**params)}
    except Exception as exc:  # pcluster's API exceptions carry their code and a content model
        content = getattr(exc, "content", None)
        return {"status": getattr(exc, "code", 0), "body": {"message": getattr(content, "message", str(exc))}}


def client(api: image_logs_api.ImageLogsApi, operation: str, params: dict) -> dict:
    args = [params.pop("image_id")]
    if "log_stream_name" in params:
        args.append(params.pop("log_stream_name"))
    try:
        # Typed first: the generated client must accept the answer (types, required fields) as it is.
        getattr(api, operation)(*args, **params)
        raw = getattr(api, operation)(*args, **params, _preload_content=False)
    except pcluster_client.ApiException as exc:
        return {"status": exc.status, "body": json.loads(exc.body), "cache": (exc.headers or {}).get("X-Cache")}
    return {"status": raw.status, "body": json.loads(raw.data), "cache": raw.headers.get("X-Cache")}


def main() -> None:
    url, calls = sys.argv[1], json.loads(sys.argv[2])
    configuration = pcluster_client.Configuration(host=url)
    out = []
    with pcluster_client.ApiClient(configuration) as api_client:
        api = image_logs_api.ImageLogsApi(api_client)
        for operation, params in calls:
            out.append({"pcluster": library(operation, dict(params)), "ours": client(api, operation, dict(params))})
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
