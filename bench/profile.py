"""python -m bench.profile: where a cached answer's time goes, by feature, in microseconds per request.

`serve` (seeded, like bench.floor's) answers one workload under wrk while py-spy samples it (own time, the
frame on top of the stack, idle excluded, without pausing the process); the same requests are then sent to the
raw ASGI floor (bench.floor) for the rate the server alone allows. Every sampled frame is put in one bucket:
the server itself (uvicorn, httptools, uvloop, asyncio: the floor pays this too), or the feature of ours whose
code it is (request ids and counting, validation, the record and its headers, authentication, the connection
bounds, ...). A bucket's share of the samples times the time per request is what that feature costs per
request, and the ratio the answer would reach were it free: the measure issue 20 asks for where a ratio cannot
be reached without dropping a feature.

    .venv/bin/python -m bench.profile [--workload describe|describe-304|list|list-304] [--seconds 8] [--tokens]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx

from bench import load, sampling, seed, servers, wrk
from bench.fake import TimedFakeAws
from bench.floor import TOKEN, capture, start_floor

# (bucket, pattern on the frame's file): the first that matches names the bucket. Ours are by module, as the
# features live in them; what is not ours is the server's.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("request id, counting, log context (instrument)", re.compile(r"service/api/instrument\.py")),
    ("connection bounds (connections)", re.compile(r"service/api/connections\.py")),
    ("authentication (auth, tokens)", re.compile(r"service/api/(auth|tokens|sessions)\.py")),
    ("CORS (cors)", re.compile(r"service/api/cors\.py")),
    ("validation: query, id, region (query, requests)", re.compile(r"service/api/(query|requests)\.py")),
    ("describe: record, Age, X-Cache, ETag, 304 (describe, lookup)",
     re.compile(r"service/(api/describe|ingest/lookup|domain/describe|presign)\.py")),
    ("list: page, ETag, 304, staleness (listing)", re.compile(r"service/api/(listing|pages|compression)\.py")),
    ("app wiring (app, state)", re.compile(r"service/api/(app|state)\.py")),
    ("other statuscache code", re.compile(r"service/")),
    ("server: uvicorn, httptools, uvloop, asyncio (the floor pays it too)", re.compile(r".")),
]
# py-spy's raw format: frames separated by ";", the count last; a frame is "function (file:line)".
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def ensure_py_spy() -> str:
    if not sampling.available():
        raise SystemExit("py-spy is missing: `make install` installs it (the dev extra)")
    return sampling.py_spy()


# The socket write of an answer the connection writes itself is in a function of ours (write_unsent; _write_answer
# for an answer that ends its connection), but it is the write the floor's uvicorn `send` makes too (twice: head, then
# body): the server's, not a feature's.
SERVER_WRITES = {"BoundedHttpToolsProtocol.write_unsent", "BoundedHttpToolsProtocol._write_answer"}


def bucket_of(file: str, function: str = "") -> str:
    if function in SERVER_WRITES:
        return BUCKETS[-1][0]
    return next(name for name, pattern in BUCKETS if pattern.search(file))


def own_time(raw: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Samples by bucket and by function (own time: the frame on top), and the total, from py-spy's raw output."""
    buckets: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in sampling.stacks(raw):
        top = frames[-1]
        match = FRAME.match(top)
        file = match["file"] if match else top
        function = f"{match['function']} ({Path(file).name})" if match else top
        buckets[bucket_of(file, match["function"] if match else "")] += count
        functions[function] += count
        total += count
    return buckets, functions, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--workload", default="describe", choices=["describe", "describe-304", "list", "list-304"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--tokens", action="store_true", help="with a tokens file (every request authenticated)")
    parser.add_argument("--top", type=int, default=20, help="functions listed by own time")
    parser.add_argument("--rate", type=int, default=997, help="py-spy samples per second")
    args = parser.parse_args(argv)
    py_spy = ensure_py_spy()
    wrk.ensure_wrk()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-profile-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        images = seed.synthetic(args.images)
        seed.seed_sqlite_sync(workdir / "profile.db", images)
        env, auth = {}, {}
        if args.tokens:
            tokens = workdir / "tokens"
            tokens.write_text(f"bench {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
            env, auth = {"STATUSCACHE_API_TOKENS_FILE": str(tokens)}, {"Authorization": f"Bearer {TOKEN}"}
        service = stack.enter_context(servers.start_serve(
            name="service", database_url=f"sqlite+aiosqlite:///{workdir / 'profile.db'}",
            aws_endpoint=fake.endpoint_url, log_dir=workdir, extra_env=env,
        ))  # fmt: skip
        paths = [load.describe_path(image.image_id) for image in images]
        with httpx.Client(base_url=service.base, timeout=30.0, headers=auth) as client:
            pages = [load.LIST_PATH]
            while len(pages) <= 10 and (token := client.get(pages[-1]).json().get("nextToken")):
                pages.append(str(httpx.URL(load.LIST_PATH).copy_merge_params({"nextToken": token})))
            targets = paths if args.workload.startswith("describe") else pages
            etags = [client.get(path).headers["etag"] for path in targets]
        conditional = args.workload.endswith("-304")
        headers = [auth | ({"If-None-Match": etag} if conditional else {}) for etag in etags]
        script = wrk.write_script(workdir, "profile.lua", wrk.rotation_script(targets, headers=headers, threads=1))
        answers = capture(service.base, describe=paths[len(paths) // 2], page=pages[0], headers=auth)
        answers_path = workdir / "floor.json"
        answers_path.write_text(json.dumps({"answers": answers, "authorization": auth.get("Authorization")}))
        floor = stack.enter_context(start_floor(answers_path=answers_path, log_dir=workdir, name="floor"))
        for target in (service, floor):
            wrk.run(target.base, script=script, duration=1, connections=args.connections, threads=1)

        # Sampled while wrk runs: py-spy starts a second in and stops a second before wrk does.
        raw_path = workdir / "samples.txt"
        sampled: dict[str, subprocess.CompletedProcess[str]] = {}

        def sample() -> None:
            threading.Event().wait(1.0)
            sampled["py-spy"] = subprocess.run(
                [py_spy, "record", "--pid", str(service.pid), "--duration", str(int(args.seconds)), "--rate",
                 str(args.rate), "--nonblocking", "--format", "raw", "--output", str(raw_path)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip

        sampler = threading.Thread(target=sample)
        sampler.start()
        mine = wrk.run(service.base, script=script, duration=args.seconds + 2, connections=args.connections, threads=1)
        sampler.join()
        bare = wrk.run(floor.base, script=script, duration=args.seconds, connections=args.connections, threads=1)
        if sampled["py-spy"].returncode != 0 or not raw_path.exists():
            raise SystemExit(f"py-spy failed: {sampled['py-spy'].stderr.strip()}")
        buckets, functions, total = own_time(raw_path.read_text())

    per_request = 1e6 / mine.rps
    floor_per_request = 1e6 / bare.rps
    ratio = mine.rps / bare.rps
    print(f"{args.workload}{' with a tokens file' if args.tokens else ''}: statuscache {mine.rps:,.0f} req/s "
          f"({per_request:.1f} us/request), raw ASGI {bare.rps:,.0f} req/s ({floor_per_request:.1f} us/request), "
          f"ratio {ratio:.2f}x; {total:,} samples over {args.seconds:g}s (wrk -t1 -c{args.connections})")  # fmt: skip
    print(f"{'where the time goes (own time)':<68}{'share':>7}{'us/req':>8}{'ratio were it free':>20}")
    for name, count in buckets.most_common():
        share = count / total
        cost = share * per_request
        free = 1e6 / (per_request - cost) / bare.rps if "server" not in name else float("nan")
        print(f"{name:<68}{share:>6.1%}{cost:>8.2f}{free:>19.2f}x")
    print(f"top {args.top} functions by own time:")
    for function, count in functions.most_common(args.top):
        print(f"  {count / total:>6.1%}  {count / total * per_request:>6.2f} us  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
