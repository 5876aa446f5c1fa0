"""python -m bench.floor: the cached answers against the server's own floor, a raw ASGI app on the same uvicorn.

The floor is no framework at all: one ASGI callable answering, from memory, the very status, headers and body the
service answered (captured from it first), for the cached describe, its 304, a list page and its 304; with a tokens
file, it checks the one Authorization header by comparing bytes. It runs on uvicorn with the same HTTP
implementation and event loop `serve` gets (httptools, uvloop). wrk sends both the same requests in alternating
rounds, the order flipping every round; every figure is the median of the per-round ratios.

    .venv/bin/python -m bench.floor [--rounds 5] [--duration 3] [--connections 32] [--images 1000]

Served as a module too (`python -m uvicorn bench.floor:app`, BENCH_FLOOR_ANSWERS naming the captured answers).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import load, seed, servers, wrk
from bench.fake import TimedFakeAws

ANSWERS_ENV = "BENCH_FLOOR_ANSWERS"
TOKEN = "sct_bench_" + "f" * 40
TARGET_RPS = 0.85
TARGET_P99 = 1.25
# Status, headers, body. Headers whose value is per request by nature (the request id, Age) are sent as captured.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def _load(path: str) -> dict[str, Answer]:
    raw = json.loads(Path(path).read_text())
    return {
        name: (item["status"], [(k.encode(), v.encode()) for k, v in item["headers"]], base64.b64decode(item["body"]))
        for name, item in raw["answers"].items()
    }


class Floor:
    """The raw ASGI app: the captured answer for the request's kind, or 401 without the expected Authorization."""

    def __init__(self, answers: dict[str, Answer], *, authorization: bytes | None) -> None:
        self.answers = answers
        self.authorization = authorization
        self.refused: Answer = (401, [(b"content-type", b"application/json")], b'{"message":"Unauthorized"}')

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:  # fmt: skip
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        conditional = authorized = False
        for key, value in scope["headers"]:
            if key == b"if-none-match":
                conditional = True
            elif key == b"authorization":
                authorized = value == self.authorization
        if scope["path"] == "/readyz":
            status, headers, body = 200, [(b"content-type", b"application/json")], b"{}"
        elif self.authorization is not None and not authorized:
            status, headers, body = self.refused
        else:
            kind = "describe" if scope["path"].startswith("/v3/images/custom/") else "list"
            status, headers, body = self.answers[kind + ("-304" if conditional else "")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _app() -> Floor:
    path = os.environ.get(ANSWERS_ENV)
    if not path:
        return Floor({}, authorization=None)
    raw = json.loads(Path(path).read_text())
    token = raw.get("authorization")
    return Floor(_load(path), authorization=token.encode() if token else None)


app = _app()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def capture(base: str, *, describe: str, page: str, headers: dict[str, str]) -> dict[str, Any]:
    """The service's own answers (status, headers, body) for the four requests the floor serves."""
    answers: dict[str, Any] = {}
    # wrk asks for no encoding: neither does the capture (httpx would ask for gzip and hand back the inflated body).
    with httpx.Client(base_url=base, timeout=30.0, headers=headers | {"Accept-Encoding": "identity"}) as client:
        for name, path in (("describe", describe), ("list", page)):
            plain = client.get(path)
            assert plain.status_code == 200, (path, plain.status_code, plain.text[:200])
            conditional = client.get(path, headers={"If-None-Match": plain.headers["etag"]})
            assert conditional.status_code == 304, (path, conditional.status_code)
            for key, response in ((name, plain), (name + "-304", conditional)):
                # uvicorn adds date and server itself (and content-length where the app gave none).
                kept = [(k, v) for k, v in response.headers.multi_items() if k not in ("date", "server")]
                answers[key] = {"status": response.status_code, "headers": kept,
                                "body": base64.b64encode(response.content).decode()}  # fmt: skip
    return answers


def start_floor(*, answers_path: Path, log_dir: Path, name: str) -> servers.Process:
    """The raw app on uvicorn as `serve` runs it: httptools, uvloop, no access log, one worker."""
    return servers.start_asgi(
        "bench.floor:app", env={ANSWERS_ENV: str(answers_path)}, log_dir=log_dir, name=name,
        # No proxy-headers middleware: the floor is bare (and `serve` has none unless a proxy is named).
        options=["--http", "httptools", "--loop", "uvloop", "--no-proxy-headers"],
    )  # fmt: skip


@dataclass
class Figures:
    rps: list[tuple[float, float]]
    p99: list[tuple[float, float]]

    def summary(self) -> tuple[float, float, float, float, float, float]:
        ratio = statistics.median(mine / floor for mine, floor in self.rps)
        p99 = statistics.median(mine / floor for mine, floor in self.p99)
        return (
            statistics.median(m for m, _ in self.rps), statistics.median(f for _, f in self.rps), ratio,
            statistics.median(m for m, _ in self.p99), statistics.median(f for _, f in self.p99), p99,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated workloads (describe, describe-304, list, list-304)")
    parser.add_argument("--no-tokens", action="store_true", help="only the anonymous service")
    args = parser.parse_args(argv)
    wrk.ensure_wrk()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-floor-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        images = seed.synthetic(args.images)
        tokens = workdir / "tokens"
        tokens.write_text(f"bench {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
        setups = {"anonymous": ({}, {})}
        if not args.no_tokens:
            setups["tokens"] = ({"STATUSCACHE_API_TOKENS_FILE": str(tokens)}, {"Authorization": f"Bearer {TOKEN}"})
        results: dict[tuple[str, str], Figures] = {}
        for setup, (env, auth) in setups.items():
            seed.seed_sqlite_sync(workdir / f"{setup}.db", images)
            service = stack.enter_context(servers.start_serve(
                name=f"service-{setup}", database_url=f"sqlite+aiosqlite:///{workdir / (setup + '.db')}",
                aws_endpoint=fake.endpoint_url, log_dir=workdir, extra_env=env,
            ))  # fmt: skip
            paths = [load.describe_path(image.image_id) for image in images]
            with httpx.Client(base_url=service.base, timeout=30.0, headers=auth) as client:
                pages = [load.LIST_PATH]
                while len(pages) <= 50 and (token := client.get(pages[-1]).json().get("nextToken")):
                    pages.append(str(httpx.URL(load.LIST_PATH).copy_merge_params({"nextToken": token})))
                page_etags = [client.get(page).headers["etag"] for page in pages]
            answers = capture(service.base, describe=paths[len(paths) // 2], page=pages[0], headers=auth)
            answers_path = workdir / f"floor-{setup}.json"
            answers_path.write_text(json.dumps({"answers": answers, "authorization": auth.get("Authorization")}))
            floor = stack.enter_context(start_floor(answers_path=answers_path, log_dir=workdir, name=f"floor-{setup}"))
            scripts = {
                "describe": wrk.rotation_script(paths, headers=[auth] * len(paths), threads=args.threads),
                "list": wrk.rotation_script(pages, headers=[auth] * len(pages), threads=args.threads),
                "list-304": wrk.rotation_script(
                    pages, headers=[auth | {"If-None-Match": etag} for etag in page_etags], threads=args.threads),
            }  # fmt: skip
            wanted = args.only.split(",") if args.only else ["describe", "describe-304", "list", "list-304"]
            files = {name: workdir / f"{setup}-{name}.lua" for name in wanted}
            for name, text in scripts.items():
                if name in files:
                    files[name].write_text(text)
            etags = load.DescribeEtags(
                service.base, [image.image_id for image in images], auth=auth, script=files.get("describe-304"),
                threads=args.threads,
            )  # fmt: skip
            etags.refresh()
            for target in (floor, service):
                for script in files.values():
                    wrk.run(target.base, script=script, duration=1, connections=args.connections, threads=args.threads)
            for number in range(args.rounds):
                for name, script in files.items():
                    order = (floor, service) if number % 2 == 0 else (service, floor)
                    for _attempt in range(3):
                        started = time.time()
                        if name == "describe-304" and not etags.current(started, started):
                            etags.refresh()
                            started = time.time()
                        measured = {
                            who.name: wrk.run(who.base, script=script, duration=args.duration,
                                              connections=args.connections, threads=args.threads)
                            for who in order
                        }  # fmt: skip
                        if name != "describe-304" or etags.current(started, time.time()):
                            break
                    else:
                        raise RuntimeError(f"{setup} {name}: no round within one signing window in three attempts")
                    mine, bare = measured[service.name], measured[floor.name]
                    figures = results.setdefault((setup, name), Figures([], []))
                    figures.rps.append((mine.rps, bare.rps))
                    figures.p99.append((mine.p99_ms, bare.p99_ms))
                progress(f"  {setup} round {number + 1}/{args.rounds}: " + ", ".join(
                    f"{name} {results[(setup, name)].rps[-1][0] / results[(setup, name)].rps[-1][1]:.2f}x"
                    for name in files
                ))  # fmt: skip
    print(f"statuscache against a raw ASGI app on the same uvicorn (httptools, uvloop), wrk -t{args.threads} "
          f"-c{args.connections} -d{args.duration:g}s, median of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'figure':<28}{'statuscache':>14}{'raw ASGI':>12}{'ratio':>8}{'p99':>10}{'p99 raw':>10}"
          f"{'p99 ratio':>11}  target")  # fmt: skip
    for (setup, name), figures in results.items():
        rps, bare, ratio, p99, bare_p99, p99_ratio = figures.summary()
        ok = ratio >= TARGET_RPS and p99_ratio <= TARGET_P99
        print(f"{setup + ' ' + name:<28}{rps:>14,.0f}{bare:>12,.0f}{ratio:>7.2f}x{p99:>8.2f}ms{bare_p99:>8.2f}ms"
              f"{p99_ratio:>10.2f}x  {'ok' if ok else 'MISSED'} (>= {TARGET_RPS}x, p99 <= {TARGET_P99}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
