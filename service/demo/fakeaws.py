"""A local AWS for tests and the demo: moto server plus an Image Builder fake on one port, counting calls.

moto keeps its state in process-global backends: every FakeAws in a process
sees the same AWS, and constructing one (or calling reset) empties it.  The builders
(`create_image_stack`, `create_ami`, ...) write to moto's backends directly:
they are not AWS calls, are not counted, and keep working under `fail_all`.
"""

import collections
import hashlib
import http
import io
import json
import re
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment
from xml.sax.saxutils import escape

from moto.cloudformation.models import Event, Stack, cloudformation_backends
from moto.core.base_backend import BackendDict
from moto.core.model_instances import reset_model_data
from moto.ec2.models import ec2_backends
from moto.logs.models import logs_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from werkzeug.serving import BaseWSGIServer, make_server

ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_BUCKET = "parallelcluster-6f1f0e7c4b2d9a35-v1-do-not-delete"
IMAGE_LOGICAL_ID = "ParallelClusterImage"

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_ERROR_CODE_BY_STATUS = {500: "InternalFailure", 502: "BadGateway", 504: "GatewayTimeout"}
_S3_BUCKET_SUBRESOURCES = (
    "acl", "cors", "encryption", "lifecycle", "location", "logging", "notification",
    "ownershipControls", "policy", "publicAccessBlock", "replication", "tagging",
    "versioning", "website",
)  # fmt: skip
_S3_OBJECT_SUBRESOURCES = ("acl", "attributes", "legal-hold", "retention", "tagging")
_VERB = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}

_Response = tuple[int, list[tuple[str, str]], bytes]


class _QuietHandler(MotoRequestHandler):
    """moto's request handler without werkzeug's one-line-per-request access log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _ImageBuilderImageResource:
    """Stands in for ParallelClusterImage in moto's resource map, which cannot model AWS::ImageBuilder::Image.

    Reports the Image Builder ARN as physical id; deleting it deletes the placeholder moto created.
    """

    cf_resource_type = "AWS::ImageBuilder::Image"

    def __init__(self, *, placeholder: Any, arn: str) -> None:
        self.logical_resource_id = IMAGE_LOGICAL_ID
        self.physical_resource_id = arn
        self._placeholder = placeholder

    def is_created(self) -> bool:
        return True

    def delete(self, account_id: str, region_name: str) -> None:
        self._placeholder.delete(account_id, region_name)


class FakeAws:
    """moto in server mode plus a wire-level Image Builder fake, served in-process on one port."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self._calls: collections.Counter[str] = collections.Counter()
        self._failures: dict[str, collections.deque[tuple[str, int]]] = {}
        self._down_status: int | None = None
        # Operations failing on every call until recover(): a throttle or outage of one API, not of AWS.
        self._failing: dict[str, tuple[str, int]] = {}
        self._images: dict[str, dict[str, Any]] = {}
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""
        self.reset()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = make_server(self._host, self._port, self, threaded=True, request_handler=_QuietHandler)
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        self.endpoint_url = f"http://{host}:{self._server.server_port}"
        # A short poll interval keeps stop() fast; shutdown() waits for the next poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakeaws", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty every moto backend and the Image Builder fake; clear counters and injected failures."""
        BackendDict.reset()
        reset_model_data()
        with self._lock:
            self._images.clear()
            self._calls.clear()
            self._failures.clear()
            self._failing.clear()
            self._down_status = None

    # -- call counting and failure injection ------------------------------

    @property
    def calls(self) -> collections.Counter[str]:
        """A snapshot of calls so far, keyed "service.Operation"."""
        with self._lock:
            return collections.Counter(self._calls)

    def total_calls(self, service: str | None = None) -> int:
        with self._lock:
            return sum(n for key, n in self._calls.items() if service in (None, key.partition(".")[0]))

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def fail_next(self, operation: str, *, code: str = "Throttling", status: int = 400, times: int = 1) -> None:
        with self._lock:
            self._failures.setdefault(operation, collections.deque()).extend([(code, status)] * times)

    def fail_all(self, *, status: int = 503) -> None:
        with self._lock:
            self._down_status = status

    def fail_always(self, operation: str, *, code: str = "Throttling", status: int = 400) -> None:
        """Fail every call of `operation` ("service.Operation") until recover()."""
        with self._lock:
            self._failing[operation] = (code, status)

    def recover(self) -> None:
        """End fail_all and fail_always (failures queued by fail_next stay queued)."""
        with self._lock:
            self._down_status = None
            self._failing.clear()

    def _record(self, key: str) -> tuple[str, int] | None:
        """Count one call; return the (code, status) it must fail with, if any."""
        with self._lock:
            self._calls[key] += 1
            if self._down_status is not None:
                status = self._down_status
                return _ERROR_CODE_BY_STATUS.get(status, "ServiceUnavailable"), status
            if key in self._failing:
                return self._failing[key]
            queued = self._failures.get(key)
            return queued.popleft() if queued else None

    # -- WSGI --------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self._moto(environ, start_response)  # type: ignore[no-any-return]
        service, operation, protocol = _classify(environ)
        failure = self._record(f"{service}.{operation}")
        if failure is not None:
            code, status = failure
            message = "Rate exceeded" if code == "Throttling" else f"{code} injected by fakeaws"
            response = _error(protocol, code=code, message=message, status=status)
            if environ["REQUEST_METHOD"] == "HEAD":
                response = (response[0], response[1], b"")
        elif service == "imagebuilder":
            response = self._imagebuilder(environ, operation)
        else:
            return self._moto(environ, start_response)  # type: ignore[no-any-return]
        status, headers, body = response
        start_response(_status_line(status), headers)
        return [body]

    # -- Image Builder -----------------------------------------------------

    def put_imagebuilder_image(self, arn: str, *, status: str, reason: str | None = None) -> None:
        state = {"status": status} if reason is None else {"status": status, "reason": reason}
        with self._lock:
            image = self._images.get(arn)
            if image is None:
                parts = arn.rsplit(":", 1)[-1].split("/")  # image/<name>/<version>/<build>
                name, version = [*parts, "", ""][1:3]
                image = self._images[arn] = {
                    "arn": arn,
                    "type": "AMI",
                    "name": name,
                    "version": version,
                    "platform": "Linux",
                    "buildType": "USER_INITIATED",
                    "dateCreated": _iso_millis(datetime.now(UTC)),
                }
            image["state"] = state

    def delete_imagebuilder_image(self, arn: str) -> None:
        with self._lock:
            self._images.pop(arn, None)

    def imagebuilder_arn(self, *, region: str, image_id: str, version: str = "3.9.0") -> str:
        return f"arn:aws:imagebuilder:{region}:{ACCOUNT_ID}:image/parallelclusterimage-{image_id.lower()}/{version}/1"

    def _imagebuilder(self, environ: WSGIEnvironment, operation: str) -> _Response:
        if operation != "GetImage" or environ["REQUEST_METHOD"] != "GET":
            message = f"fakeaws serves only GetImage, not {operation}"
            return _error("rest-json", code="InvalidRequestException", message=message, status=400)
        arn = parse_qs(environ.get("QUERY_STRING", "")).get("imageBuildVersionArn", [""])[0]
        request_id = str(uuid.uuid4())
        with self._lock:
            image = self._images.get(arn)
            body = json.dumps({"requestId": request_id, "image": image}).encode()
        if image is None:
            message = f"The resource {arn} does not exist."
            return _error("rest-json", code="ResourceNotFoundException", message=message, status=404)
        return 200, [("Content-Type", "application/json"), ("x-amzn-RequestId", request_id)], body

    # -- CloudFormation ----------------------------------------------------

    def create_image_stack(
        self,
        *,
        region: str,
        image_id: str,
        version: str = "3.9.0",
        bucket: str | None = DEFAULT_BUCKET,
        status: str = "CREATE_IN_PROGRESS",
        reason: str | None = None,
        imagebuilder_status: str | None = "BUILDING",
        imagebuilder_reason: str | None = None,
        with_image_resource: bool = True,
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        tags = self._parallelcluster_tags(region=region, image_id=image_id, version=version, bucket=bucket)
        tags |= extra_tags or {}
        resources: dict[str, Any] = {}
        if with_image_resource:
            # moto cannot create AWS::ImageBuilder::Image; a log group holds the place until swapped below.
            resources[IMAGE_LOGICAL_ID] = {"Type": "AWS::Logs::LogGroup", "Properties": {}}
        else:
            resources["BuildNotificationTopic"] = {"Type": "AWS::SNS::Topic", "Properties": {}}
        template = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": f"AWS ParallelCluster image build stack for {image_id}",
            "Resources": resources,
        }
        backend = cloudformation_backends[ACCOUNT_ID][region]
        stack = backend.create_stack(image_id, json.dumps(template), {}, tags=tags)
        if with_image_resource:
            arn = self.imagebuilder_arn(region=region, image_id=image_id, version=version)
            parsed = stack.resource_map._parsed_resources
            parsed[IMAGE_LOGICAL_ID] = _ImageBuilderImageResource(placeholder=parsed[IMAGE_LOGICAL_ID], arn=arn)
            if imagebuilder_status is not None:
                self.put_imagebuilder_image(arn, status=imagebuilder_status, reason=imagebuilder_reason)
        if bucket is not None:
            image_dir = tags["parallelcluster:s3_image_dir"]
            self._put_image_config(region=region, bucket=bucket, image_dir=image_dir)
        self.set_stack_status(region=region, stack_name=image_id, status=status, reason=reason)
        return stack.stack_id

    def set_stack_status(self, *, region: str, stack_name: str, status: str, reason: str | None = None) -> None:
        stack = self._live_stack(region=region, stack_name=stack_name)
        stack.status = status
        stack.status_reason = reason  # type: ignore[attr-defined]  # moto serializes it as StackStatusReason

    def delete_stack(self, *, region: str, stack_name: str) -> None:
        self._live_stack(region=region, stack_name=stack_name)
        cloudformation_backends[ACCOUNT_ID][region].delete_stack(stack_name)

    def add_stack_event(
        self,
        *,
        region: str,
        stack_name: str,
        logical_id: str,
        status: str,
        reason: str | None = None,
        resource_type: str = "AWS::ImageBuilder::Image",
        physical_id: str = "",
    ) -> None:
        """A resource's status change in the stack's events (moto only records the stack's own)."""
        stack = self._live_stack(region=region, stack_name=stack_name)
        stack.events.append(
            Event(
                stack_id=stack.stack_id, stack_name=stack.name, logical_resource_id=logical_id,
                physical_resource_id=physical_id, resource_type=resource_type, resource_status=status,
                resource_status_reason=reason, resource_properties=None,
            )
        )  # fmt: skip

    def put_build_log(self, *, region: str, image_id: str, stream: str, messages: list[tuple[int, str]]) -> None:
        """Log events (epoch milliseconds, message) in the build's Image Builder log group, created as needed."""
        backend = logs_backends[ACCOUNT_ID][region]
        group = f"/aws/imagebuilder/ParallelClusterImage-{image_id}"
        if group not in backend.groups:
            backend.create_log_group(group, tags={})
        if stream not in backend.groups[group].streams:
            backend.create_log_stream(group, stream)
        backend.put_log_events(group, stream, [{"timestamp": ms, "message": text} for ms, text in messages])

    def delete_build_logs(self, *, region: str, image_id: str) -> None:
        """Cleanup: the build's log group goes."""
        logs_backends[ACCOUNT_ID][region].delete_log_group(f"/aws/imagebuilder/ParallelClusterImage-{image_id}")

    def stack_id(self, *, region: str, stack_name: str) -> str:
        """The id (ARN) of the running stack with that name."""
        return str(self._live_stack(region=region, stack_name=stack_name).stack_id)

    def ami_ids(self, *, region: str, image_id: str) -> list[str]:
        """Ids of the AMIs tagged with this ParallelCluster image id."""
        return sorted(
            ami.id
            for ami in ec2_backends[ACCOUNT_ID][region].amis.values()
            if any(tag.get("key") == "parallelcluster:image_id" and tag.get("value") == image_id
                   for tag in ami.get_tags())
        )

    def _live_stack(self, *, region: str, stack_name: str) -> Stack:
        for stack in cloudformation_backends[ACCOUNT_ID][region].stacks.values():
            if stack.name == stack_name:
                return stack
        raise KeyError(f"no live stack named {stack_name!r} in {region}")

    # -- EC2 ---------------------------------------------------------------

    def create_ami(
        self,
        *,
        region: str,
        image_id: str,
        version: str = "3.9.0",
        bucket: str | None = DEFAULT_BUCKET,
        name: str | None = None,
        description: str | None = "AWS ParallelCluster AMI for alinux2",
        architecture: str = "x86_64",
        build_status: str = "available",
        extra_tags: dict[str, str] | None = None,
    ) -> str:
        pc_tags = self._parallelcluster_tags(region=region, image_id=image_id, version=version, bucket=bucket)
        tags = {
            key: pc_tags[key]
            for key in ("parallelcluster:image_id", "parallelcluster:version", "parallelcluster:image_name")
        }
        tags["parallelcluster:build_status"] = build_status
        for key in ("parallelcluster:s3_bucket", "parallelcluster:s3_image_dir", "parallelcluster:build_log"):
            if key in pc_tags:
                tags[key] = pc_tags[key]
        tags |= extra_tags or {}
        # ParallelCluster names the AMI after the image id and Image Builder's build date.
        ami_name = name or f"{image_id} {datetime.now(UTC):%Y-%m-%dT%H-%M-%S}.000Z"
        backend = ec2_backends[ACCOUNT_ID][region]
        ami = backend.register_image(ami_name, description)
        ami.architecture = architecture  # moto's RegisterImage ignores Architecture
        backend.create_tags([ami.id], tags)
        if bucket is not None:
            image_dir = tags["parallelcluster:s3_image_dir"]
            self._put_image_config(region=region, bucket=bucket, image_dir=image_dir)
        return str(ami.id)

    def set_ami_state(self, *, region: str, ami_id: str, state: str) -> None:
        ec2_backends[ACCOUNT_ID][region].amis[ami_id].state = state

    def deregister_ami(self, *, region: str, ami_id: str) -> None:
        ec2_backends[ACCOUNT_ID][region].deregister_image(ami_id)

    # -- shared by the builders ----------------------------------------------

    def _parallelcluster_tags(self, *, region: str, image_id: str, version: str, bucket: str | None) -> dict[str, str]:
        """The tags ParallelCluster puts on a build stack, in its order."""
        # Deterministic per image, so the stack and the AMI of one build agree.
        suffix = hashlib.sha256(f"{region}/{image_id}".encode()).hexdigest()[:16]
        image_dir = f"parallelcluster/{version}/images/{image_id.lower()}-{suffix}"
        tags = {
            "parallelcluster:image_id": image_id,
            "parallelcluster:version": version,
            "parallelcluster:image_name": image_id,
        }
        if bucket is not None:
            tags["parallelcluster:s3_bucket"] = bucket
        tags["parallelcluster:s3_image_dir"] = image_dir
        tags["parallelcluster:build_log"] = (
            f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:/aws/imagebuilder/ParallelClusterImage-{image_id}"
        )
        if bucket is not None:
            tags["parallelcluster:build_config"] = f"s3://{bucket}/{image_dir}/configs/image-config.yaml"
        return tags

    def _put_image_config(self, *, region: str, bucket: str, image_dir: str) -> None:
        backend = s3_backends[ACCOUNT_ID]["aws"]
        if bucket not in backend.buckets:
            backend.create_bucket(bucket, region)
        config = b"Build:\n  InstanceType: c5.xlarge\n  ParentImage: ami-0123456789abcdef0\n"
        backend.put_object(bucket, f"{image_dir}/configs/image-config.yaml", config)


def _classify(environ: WSGIEnvironment) -> tuple[str, str, str]:
    """(service, operation, wire protocol) of one request; may re-seat wsgi.input after reading it."""
    method = environ["REQUEST_METHOD"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if scope is None:
        presigned = _SCOPE.search("Credential=" + query.get("X-Amz-Credential", ""))
        if presigned is not None or "AWSAccessKeyId" in query:
            service = presigned.group(1) if presigned is not None else "s3"
            return service, f"Presigned{_VERB.get(method, method.title())}", "rest-xml"
    service = scope.group(1) if scope is not None else "unsigned"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return service, target.rpartition(".")[2], "json"
    if service == "s3":
        copy = "HTTP_X_AMZ_COPY_SOURCE" in environ
        return service, _s3_operation(method, environ.get("PATH_INFO", "/"), query, copy=copy), "rest-xml"
    if service == "imagebuilder":
        return service, environ.get("PATH_INFO", "/").strip("/").split("/")[0] or method, "rest-json"
    action = query.get("Action") or _form_action(environ)
    if action is not None:
        return service, action, "ec2" if service == "ec2" else "query"
    return service, method.title(), "rest-json"


def _form_action(environ: WSGIEnvironment) -> str | None:
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return None
    body: bytes = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)  # moto reads the body again
    actions = parse_qs(body.decode()).get("Action")
    return actions[0] if actions else None


def _s3_operation(method: str, path: str, query: dict[str, str], *, copy: bool) -> str:
    """S3's operation name from a path-style request."""
    bucket, _, key = path.lstrip("/").partition("/")
    verb = _VERB.get(method, method.title())
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{verb}Service"
    if not key:
        if method == "GET" and query.get("list-type") == "2":
            return "ListObjectsV2"
        if method == "GET" and ("uploads" in query or "versions" in query):
            return "ListMultipartUploads" if "uploads" in query else "ListObjectVersions"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        for sub in _S3_BUCKET_SUBRESOURCES:
            if sub in query:
                return f"{verb}Bucket{sub[0].upper()}{sub[1:]}"
        default = {"GET": "ListObjects", "PUT": "CreateBucket"}
        return default.get(method, f"{verb}Bucket")
    if "uploadId" in query:
        multipart = {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "GET": "ListParts"}
        return multipart.get(method, "AbortMultipartUpload")
    if method == "POST" and "uploads" in query:
        return "CreateMultipartUpload"
    for sub in _S3_OBJECT_SUBRESOURCES:
        if sub in query:
            return f"{verb}Object{sub.title().replace('-', '')}"
    return "CopyObject" if method == "PUT" and copy else f"{verb}Object"


def _error(protocol: str, *, code: str, message: str, status: int) -> _Response:
    """An error response in `protocol`'s real wire shape, so botocore raises ClientError(code)."""
    request_id = str(uuid.uuid4())
    code_x, message_x = escape(code), escape(message)
    if protocol == "rest-json":
        # botocore takes a REST-JSON error's code from this header.
        headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)]
        return status, headers, json.dumps({"message": message}).encode()
    if protocol == "json":
        headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-RequestId", request_id)]
        return status, headers, json.dumps({"__type": code, "message": message}).encode()
    if protocol == "rest-xml":
        xml = f"<Error><Code>{code_x}</Code><Message>{message_x}</Message><RequestId>{request_id}</RequestId></Error>"
        return status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], xml.encode()
    if protocol == "ec2":
        xml = (
            f"<Response><Errors><Error><Code>{code_x}</Code><Message>{message_x}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
        return status, [("Content-Type", "text/xml")], xml.encode()
    fault = "Sender" if status < 500 else "Receiver"
    xml = (
        f"<ErrorResponse><Error><Type>{fault}</Type><Code>{code_x}</Code><Message>{message_x}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], xml.encode()


def _iso_millis(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:  # fail_all(status=599) is allowed
        return f"{status} Error"
