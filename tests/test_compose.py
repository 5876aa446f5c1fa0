"""docker-compose.yml and the Dockerfile: coherent with the CLI and the settings, and the stack run as local processes.

There is no Docker engine where the suite runs, so the stack test plays every compose service with its own
command and environment as a local process: moto_server for `moto`, a fresh database on the local PostgreSQL
for `postgres`, and host names mapped to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

import service.__main__ as cli
from service import runner
from service import settings as settings_module
from service.demo import seeding
from service.settings import from_env
from service.store.tables import images
from tests.conftest import PG_ADMIN_URL, _pg_admin
from tests.test_e2e import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)
API_REPLICAS = ("api-1", "api-2")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Entry points the image offers, and what each is outside a container.
LOCAL_ENTRYPOINTS = {
    ("statuscache",): [sys.executable, "-m", "service"],
    ("python", "-m", "service.demo.seeding"): [sys.executable, "-m", "service.demo.seeding"],
}
REGION = "us-east-1"


# --- the Dockerfile, read the way docker reads it -------------------------------------------------------


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage, comments dropped and continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


Stage = list[tuple[str, str]]


def stage_name(stage: Stage) -> str | None:
    """The stage's `AS name`, if it has one."""
    words = stage[0][1].split()
    return words[2] if len(words) == 3 and words[1].lower() == "as" else None


def named_stage(name: str) -> Stage:
    (stage,) = (stage for stage in dockerfile_stages() if stage_name(stage) == name)
    return stage


def default_target() -> Stage:
    """The stage `docker build` builds without --target: the last one."""
    return dockerfile_stages()[-1]


def target_stage(target: str | None) -> Stage:
    return default_target() if target is None else named_stage(target)


def base(stage: Stage) -> str:
    return stage[0][1].split()[0]


def image_instructions(target: str | None = None) -> Stage:
    """Every instruction that shapes the target's image: its own and its bases' (FROM another stage), base first."""
    stage = target_stage(target)
    names = {stage_name(other) for other in dockerfile_stages()}
    inherited = image_instructions(base(stage)) if base(stage) in names else []
    return inherited + stage[1:]


def build_stages(target: str | None = None) -> list[Stage]:
    """The stages docker builds for the target: it, its bases, and the stages it copies from, recursively."""
    stage = target_stage(target)
    names = {stage_name(other) for other in dockerfile_stages()}
    sources = [base(stage)] + [
        arguments.split()[0].removeprefix("--from=")
        for instruction, arguments in stage
        if instruction == "COPY" and arguments.startswith("--from=")
    ]
    needed = [stage]
    for source in sources:
        if source in names:
            needed += [other for other in build_stages(source) if other not in needed]
    return needed


def runs(stages: list[Stage]) -> str:
    return " ".join(arguments for stage in stages for name, arguments in stage if name == "RUN")


def last(stage: Stage, instruction: str) -> str | None:
    values = [arguments for name, arguments in stage if name == instruction]
    return values[-1] if values else None


def exec_form(arguments: str | None) -> list[str]:
    assert arguments is not None and arguments.startswith("["), f"not in exec form: {arguments!r}"
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def image_entrypoint(target: str | None = None) -> list[str]:
    return exec_form(last(image_instructions(target), "ENTRYPOINT"))


def image_cmd(target: str | None = None) -> list[str]:
    return exec_form(last(image_instructions(target), "CMD"))


def image_healthcheck(target: str | None = None) -> list[str]:
    arguments = last(image_instructions(target), "HEALTHCHECK")
    assert arguments is not None, "the image has no HEALTHCHECK"
    return exec_form(arguments[arguments.index("CMD ") + len("CMD ") :].strip())


# --- compose services -----------------------------------------------------------------------------------


def environment(name: str) -> dict[str, str]:
    raw = SERVICES[name].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def build_target(name: str) -> str | None:
    """The Dockerfile target the service's image is built from (None: the default, the last stage)."""
    build = SERVICES[name]["build"]
    if isinstance(build, str):
        return None
    assert build.get("context", ".") == ".", f"{name}: built from another context"
    target: str | None = build.get("target")
    return target


def entrypoint(name: str) -> list[str]:
    value = SERVICES[name].get("entrypoint")
    return list(value) if value is not None else image_entrypoint(build_target(name))


def command(name: str) -> list[str]:
    service = SERVICES[name]
    if "command" in service:
        value = service["command"]
        assert isinstance(value, list), f"{name}: write command in exec form"
        return [str(part) for part in value]
    # Compose drops the image's CMD when a service sets its own entrypoint.
    return [] if "entrypoint" in service else image_cmd(build_target(name))


def depends_on(name: str) -> dict[str, str]:
    raw = SERVICES[name].get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {dependency: spec.get("condition", "service_started") for dependency, spec in raw.items()}


def one_shot(name: str) -> bool:
    return any(depends_on(other).get(name) == "service_completed_successfully" for other in SERVICES)


def healthcheck(name: str) -> list[str] | None:
    """The check compose runs for the service: its own, else the image's; None when there is none."""
    service = SERVICES[name]
    check = service.get("healthcheck")
    if check is not None:
        if check.get("disable"):
            return None
        test = check.get("test")
        assert isinstance(test, list) and test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: bad healthcheck"
        return [str(part) for part in test[1:]] if test[0] == "CMD" else ["sh", "-c", str(test[1])]
    return image_healthcheck(build_target(name)) if "build" in service else None


def parse_cli(name: str) -> Any:
    """The service's command through the parser of the program its entrypoint runs."""
    program = tuple(entrypoint(name))
    if program == ("statuscache",):
        return cli._parser().parse_args(command(name))
    assert program == ("python", "-m", "service.demo.seeding"), f"{name}: unknown entrypoint {program}"
    return seeding._parser().parse_args(command(name))


def startup_order() -> list[str]:
    """Services ordered so each comes after everything it depends on (compose's start order)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        assert name not in visiting, f"dependency cycle through {name}"
        visiting.add(name)
        for dependency in sorted(depends_on(name)):
            visit(dependency)
        visiting.discard(name)
        order.append(name)

    for name in sorted(SERVICES):
        visit(name)
    return order


# --- (a) coherence --------------------------------------------------------------------------------------


def test_file_is_valid_for_compose_v1_and_v2() -> None:
    # Compose v1 (Debian's docker-compose, what `make compose-test` runs where no v2 is installed) rejects any
    # other top-level key, `name:` included: the project is named on the command line.
    assert {key for key in COMPOSE if not key.startswith("x-")} <= {"services", "volumes", "networks"}


def test_every_published_port_is_on_loopback() -> None:
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            address, _, _ = published_port(mapping)
            assert address is not None and runner.is_loopback(address), (name, mapping)


def test_every_service_has_an_image_or_a_build() -> None:
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
    assert set(API_REPLICAS) | {"poller", "seed", "migrate"} <= set(APP_SERVICES)


def test_app_services_run_valid_cli_invocations() -> None:
    for name in APP_SERVICES:
        parse_cli(name)
    for name in API_REPLICAS:
        args = parse_cli(name)
        assert (args.command, args.host, args.no_poll) == ("serve", "0.0.0.0", True), name
    assert parse_cli("poller").command == "poll"
    assert parse_cli("migrate").command == "migrate"
    # The image's default command is a valid invocation too.
    cli._parser().parse_args(image_cmd())
    # The seeder runs in the demo image, which has what it imports (boto3); nothing else needs that image.
    assert tuple(entrypoint("seed")) == ("python", "-m", "service.demo.seeding")


def test_app_service_environments_are_accepted_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import fields

    known = {settings_module.env_name(setting) for setting in fields(settings_module.Settings)}
    known |= {"STATUSCACHE_DATABASE_URL", "STATUSCACHE_REGIONS", "STATUSCACHE_LOG_LEVEL"}
    for name in APP_SERVICES:
        env = environment(name)
        for variable in env:
            # A misspelt variable would be ignored silently: only names the settings read are allowed.
            if variable.startswith("STATUSCACHE_"):
                assert variable in known, f"{name}: {variable} is read nowhere"
        parsed = from_env(env)
        # Pointed at the moto service with credentials: serve and poll would refuse to start without AWS.
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        with monkeypatch.context() as patch:
            for variable in [variable for variable in os.environ if variable.startswith("AWS_")]:
                patch.delenv(variable)
            for variable, value in env.items():
                if variable.startswith("AWS_"):
                    patch.setenv(variable, value)
            runner.require_aws()
        assert parsed.regions == (REGION,), name
        assert parsed.resync_seconds == 60.0, name
        assert not parsed.is_sqlite, name
        assert urlsplit(parsed.database_url).hostname == "postgres", name


def test_events_queue_url_is_the_one_moto_gives_the_seeded_queue() -> None:
    queue_name = parse_cli("seed").queue_name
    for name in APP_SERVICES:
        env = environment(name)
        endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
        for queue_url in env["STATUSCACHE_EVENTS_QUEUE_URL"].split(","):
            # moto's CreateQueue answers <scheme>://<host it was called on>/<account>/<name>.
            assert urlsplit(queue_url)[:2] == endpoint[:2], name
            assert re.fullmatch(rf"/\d{{12}}/{re.escape(queue_name)}", urlsplit(queue_url).path), name


def test_depends_on_references_existing_services_with_valid_conditions() -> None:
    for name in SERVICES:
        for dependency, condition in depends_on(name).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert condition in CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert healthcheck(dependency) is not None, f"{name} waits for {dependency} healthy: no healthcheck"
            if condition == "service_completed_successfully":
                assert SERVICES[dependency].get("restart") == "no", f"{dependency} is one-shot: restart must be no"
    startup_order()  # no cycles
    for name in (*API_REPLICAS, "poller"):
        assert depends_on(name) == {
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
            "seed": "service_completed_successfully",
        }, name
    assert depends_on("seed") == {"moto": "service_healthy"}
    assert depends_on("migrate") == {"postgres": "service_healthy"}


def test_healthchecks_exist_where_something_can_answer() -> None:
    assert healthcheck("postgres") is not None
    assert healthcheck("moto") is not None
    for name in API_REPLICAS:
        check = healthcheck(name)
        assert check is not None and "/healthz" in " ".join(check), name
    # No HTTP server in these: the image's /healthz check would mark them unhealthy.
    for name in ("poller", "seed", "migrate"):
        assert healthcheck(name) is None, name


def published_port(mapping: object) -> tuple[str | None, int, int]:
    """A compose short-syntax port mapping: (host address or None for all, host port, container port)."""
    *address, host_port, container_port = str(mapping).split(":")
    return (address[0] if address else None), int(host_port), int(container_port)


def test_api_replicas_publish_distinct_host_ports_to_their_serve_port() -> None:
    host_ports = []
    for name in API_REPLICAS:
        (mapping,) = SERVICES[name]["ports"]
        _address, host_port, container_port = published_port(mapping)
        assert container_port == parse_cli(name).port, name
        host_ports.append(host_port)
    assert len(set(host_ports)) == len(API_REPLICAS)


def image_env(target: str | None = None) -> dict[str, str]:
    """The STATUSCACHE_ variables the image's ENV instructions set (`ENV NAME=value ...`)."""
    env: dict[str, str] = {}
    for instruction, arguments in image_instructions(target):
        if instruction == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                if name.startswith("STATUSCACHE_"):
                    env[name] = value
    return env


def service_settings(name: str) -> settings_module.Settings:
    """What the service's process would run with: the image's ENV, compose's environment over it, the CLI's flags."""
    args = parse_cli(name)
    env = image_env(build_target(name)) | environment(name)
    return from_env(env).with_overrides(host=args.host, port=args.port)


def test_the_image_serves_beyond_loopback_with_tokens_by_default() -> None:
    args = cli._parser().parse_args(image_cmd())
    settings = from_env(image_env()).with_overrides(host=args.host)
    assert not runner.is_loopback(settings.host)
    # It says which way it is protected: tokens, from a file mounted as a secret; never anonymous by default.
    assert settings.api_tokens_file.startswith("/run/secrets/")
    assert not settings.allow_anonymous
    runner.require_protection(settings)


def test_every_api_replica_says_how_it_is_protected() -> None:
    for name in API_REPLICAS:
        settings = service_settings(name)
        assert not runner.is_loopback(settings.host), name
        runner.require_protection(settings)
        # One or the other, explicitly: anonymous on purpose here (a local stack) and then published on
        # this machine's loopback only, so the anonymous replicas are not reachable from the network.
        assert bool(settings.api_tokens_file) != settings.allow_anonymous, name
        if settings.allow_anonymous:
            for mapping in SERVICES[name]["ports"]:
                address, _, _ = published_port(mapping)
                assert address is not None and runner.is_loopback(address), (name, mapping)


def test_moto_image_is_the_major_version_the_suite_runs() -> None:
    from importlib.metadata import version

    image = SERVICES["moto"]["image"]
    assert image.startswith("motoserver/moto:")
    assert image.partition(":")[2].split(".")[0] == version("moto").split(".")[0]


def test_dockerfile_default_image_runs_statuscache_as_non_root_with_a_healthcheck() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    image = image_instructions()
    assert image_entrypoint() == ["statuscache"]
    assert image_cmd() == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "8080" in (last(image, "EXPOSE") or "").split()
    user = last(image, "USER")
    assert user is not None and user.split(":")[0] not in {"root", "0"}
    assert "/healthz" in " ".join(image_healthcheck())
    final_text = " ".join(arguments for _, arguments in image)
    assert not re.search(r"\b(build-essential|gcc|g\+\+|apt-get install)\b", final_text), "compilers in the final image"
    builder_runs = runs([named_stage("builder")])
    assert re.search(r"pip install \.(\s|$)", builder_runs) and "-e" not in shlex.split(builder_runs)


def test_default_build_is_the_production_target() -> None:
    # `docker build .` (and compose's `build: .`) must never produce the demo image.
    assert "production" in {stage_name(default_target()), base(default_target())}
    assert image_instructions() == image_instructions("production")


def pip_installs(target: str) -> list[str]:
    """What every `pip install` that goes into the target's image installs."""
    return [arguments.strip() for arguments in re.findall(r"pip install ([^&;]*)", runs(build_stages(target)))]


def test_production_image_installs_the_package_without_extras() -> None:
    # No [demo] extra, so no moto, werkzeug or boto3 in the image the services run.
    assert pip_installs("production") == ["."]


def test_demo_image_is_production_plus_the_demo_extra() -> None:
    demo = named_stage("demo")
    assert base(demo) == "production"
    assert sorted(pip_installs("demo")) == sorted([".", "'.[demo]'"])
    # Only the venv differs: same user, entry point and health check as production.
    assert [instruction for instruction, _ in demo[1:]] == ["COPY"]
    assert image_entrypoint("demo") == image_entrypoint("production")


def test_seed_alone_is_built_from_the_demo_target() -> None:
    assert build_target("seed") == "demo"
    for name in APP_SERVICES:
        if name != "seed":
            target = build_target(name)
            assert target == "production" or (target is None and base(default_target()) == "production"), name


def test_dockerignore_lets_through_everything_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for stage in dockerfile_stages():
        for instruction, arguments in stage:
            if instruction != "COPY" or arguments.startswith("--from"):
                continue
            *sources, _destination = arguments.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


def test_seeded_rule_and_queue_match_deploy_events_yaml() -> None:
    template = yaml.safe_load((ROOT / "deploy" / "events.yaml").read_text())
    resources = template["Resources"]
    rule = next(resource["Properties"] for resource in resources.values() if resource["Type"] == "AWS::Events::Rule")
    account = "123456789012"

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"Fn::Sub"}:
            return (
                value["Fn::Sub"]
                .replace("${AWS::Partition}", "aws")
                .replace("${AWS::Region}", REGION)
                .replace("${AWS::AccountId}", account)
            )
        if isinstance(value, dict):
            return {key: resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return value

    assert seeding.event_pattern(partition="aws", region=REGION, account_id=account) == resolve(rule["EventPattern"])
    assert [target["Id"] for target in rule["Targets"]] == [seeding.TARGET_ID]
    assert template["Parameters"]["QueueName"]["Default"] == seeding.DEFAULT_QUEUE_NAME == parse_cli("seed").queue_name
    queue = next(
        resource["Properties"]
        for resource in resources.values()
        if resource["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in resource["Properties"]
    )
    for attribute, value in seeding.QUEUE_ATTRIBUTES.items():
        assert str(queue[attribute]) == value, attribute
    assert template["Parameters"]["MaxReceiveCount"]["Default"] == seeding.DLQ_MAX_RECEIVE_COUNT


# --- (b) the stack as local processes ---------------------------------------------------------------------


class Stack:
    """The compose services as local processes; every one is terminated on close, logs kept for failures."""

    def __init__(self, *, workdir: Path, moto_port: int, database: str) -> None:
        self.workdir = workdir
        self.moto_port = moto_port
        self.database = database
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.ports: dict[str, int] = {}

    def env(self, name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The service's compose environment with compose host names mapped to this machine."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.workdir), "PYTHONUNBUFFERED": "1"}
        for key, value in (image_env(build_target(name)) | environment(name)).items():
            if key == "STATUSCACHE_DATABASE_URL":
                value = self.database_url(value)
            env[key] = value.replace("//moto:5000", f"//127.0.0.1:{self.moto_port}")
        return env | dict(extra or {})

    def database_url(self, url: str) -> str:
        """postgres:5432 is the local server, reached as the admin URL reaches it, with this test's database."""
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("postgres", 5432), url
        return urlunsplit((parts.scheme, urlsplit(PG_ADMIN_URL).netloc, f"/{self.database}", "", ""))

    def argv(self, name: str) -> list[str]:
        program = LOCAL_ENTRYPOINTS[tuple(entrypoint(name))]
        args = command(name)
        if "--port" in args:
            self.ports[name] = free_port()
            args[args.index("--port") + 1] = str(self.ports[name])
        if "--host" in args:
            args[args.index("--host") + 1] = "127.0.0.1"
        return [*program, *args]

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as output:
            process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def run_one_shot(self, name: str, *, timeout: float = 60) -> str:
        process = self.start(name, self.argv(name), self.env(name))
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output = self.log(name)
        assert process.returncode == 0, f"{name} exited with {process.returncode}:\n{output}"
        return output

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def wait_moto_healthy(self, *, timeout: float = 30) -> None:
        """Run moto's compose healthcheck, pointed at the local moto_server, until it passes."""
        check = healthcheck("moto")
        assert check is not None
        argv = [sys.executable if part == "python" else part.replace(":5000", f":{self.moto_port}") for part in check]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"moto not healthy within {timeout}s")

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    database = f"statuscache_compose_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{database}"'))
    running = Stack(workdir=tmp_path, moto_port=free_port(), database=database)
    try:
        yield running
    finally:
        running.close()
        for name in running.logs:  # shown by pytest only when the test failed
            print(f"----- {name} -----\n{running.log(name)[-4000:]}")
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


async def stored_image_ids(database_url: str) -> set[str]:
    engine = create_async_engine(settings_module.normalize_database_url(database_url))
    try:
        async with engine.connect() as connection:
            query = select(images.c.image_id).where(images.c.region == REGION, images.c.exists.is_(True))
            return set((await connection.execute(query)).scalars())
    finally:
        await engine.dispose()


def describe(base: str, image_id: str) -> httpx.Response:
    return httpx.get(f"{base}/v3/images/custom/{image_id}", params={"region": REGION}, timeout=10)


def without_signature(document: dict[str, Any]) -> dict[str, Any]:
    """The describe document with the pre-signed URL cut to scheme, host and path.

    Each replica signs with its own clock (X-Amz-Date, X-Amz-Signature), so that part of the body is
    per process by design; the ETag (record version and signing window) is shared.
    """
    url = document.get("imageConfiguration", {}).get("url", "")
    parts = urlsplit(url)
    return document | {"imageConfiguration": {"url": urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))}}


def list_images(base: str, status: str) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = []
    params = {"imageStatus": status, "region": REGION}
    for _ in range(50):
        response = httpx.get(f"{base}/v3/images/custom", params=params, timeout=10)
        assert response.status_code == 200, (base, response.status_code, response.text)
        body = response.json()
        images.extend(body["images"])
        if not body.get("nextToken"):
            return images
        params["nextToken"] = body["nextToken"]
    raise AssertionError(f"{base}: more than 50 pages")


@pytest.mark.slow
def test_compose_stack_serves_the_seeded_images_through_both_replicas(stack: Stack) -> None:
    order = [name for name in startup_order() if name in APP_SERVICES]
    # moto: the moto_server the moto image runs, on a free port.
    moto = stack.start(
        "moto",
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(stack.moto_port)],
        {"PATH": os.environ["PATH"], "HOME": str(stack.workdir)},
    )
    stack.wait_moto_healthy()
    assert moto.poll() is None

    one_shots = [name for name in order if one_shot(name)]
    assert set(one_shots) == {"seed", "migrate"}
    for name in one_shots:
        output = stack.run_one_shot(name)
        if name == "seed":
            # The seed prints the queue URL moto gave, which must be the one the consumers are configured with.
            assert output.strip().splitlines()[-1] == stack.env("poller")["STATUSCACHE_EVENTS_QUEUE_URL"]
    # Idempotent: seeding again neither fails nor duplicates.
    stack.run_one_shot("seed")

    for name in (name for name in order if not one_shot(name)):
        stack.start(name, stack.argv(name), stack.env(name))
    bases = {name: f"http://127.0.0.1:{stack.ports[name]}" for name in API_REPLICAS}
    for name, base in bases.items():
        wait_until_ready(base, timeout=30, process=stack.processes[name])
        # The image's own HEALTHCHECK command, pointed at this replica.
        check = [sys.executable if part == "python" else part for part in image_healthcheck(build_target(name))]
        env = stack.env(name, {"STATUSCACHE_PORT": str(stack.ports[name])})
        assert subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode == 0

    image_ids = [image.image_id for image in seeding.SEED_IMAGES]
    # Nothing has asked the replicas yet: whatever is stored, the poller's first reconcile stored.
    database_url = stack.env("poller")["STATUSCACHE_DATABASE_URL"]
    deadline = time.monotonic() + 60
    while not set(image_ids) <= asyncio.run(stored_image_ids(database_url)):
        assert time.monotonic() < deadline, "the poller's first reconcile did not store the seeded images in 60s"
        assert stack.processes["poller"].poll() is None, "the poller exited"
        time.sleep(0.5)

    for image_id in image_ids:
        # Two tries: the ETag carries the signing window, which may turn over between the two requests.
        for _ in range(2):
            replies = {name: describe(base, image_id) for name, base in bases.items()}
            statuses = {
                name: (reply.status_code, reply.headers.get("x-cache"), reply.text) for name, reply in replies.items()
            }
            assert all(status[:2] == (200, "HIT") for status in statuses.values()), statuses
            if len({reply.headers["etag"] for reply in replies.values()}) == 1:
                break
        else:
            raise AssertionError(f"{image_id}: the replicas answer different ETags: {statuses}")
        first, second = (reply.json() for reply in replies.values())
        assert first["imageId"] == image_id
        assert first["imageBuildStatus"] == "BUILD_COMPLETE", first
        assert without_signature(first) == without_signature(second), image_id

    ami_backed = {image.image_id for image in seeding.SEED_IMAGES if image.ami}
    for base in bases.values():
        available = {image["imageId"]: image for image in list_images(base, "AVAILABLE")}
        assert ami_backed <= set(available), (base, sorted(available))
        for image_id in ami_backed:
            assert available[image_id]["imageBuildStatus"] == "BUILD_COMPLETE", available[image_id]
            assert available[image_id]["region"] == REGION
            assert available[image_id]["version"] == seeding.VERSION

    for image_id in image_ids:
        for base in bases.values():
            response = httpx.get(f"{base}/v3/images/custom/{image_id}/history", params={"region": REGION}, timeout=10)
            assert response.status_code == 200, (base, image_id, response.status_code, response.text)
            history = response.json()
            assert (history["imageId"], history["region"]) == (image_id, REGION)
            assert len(history["transitions"]) >= 1, history

    stack.close()
    for name in ("poller", *API_REPLICAS):
        assert "Traceback" not in stack.log(name), name
