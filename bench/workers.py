"""python -m bench.workers: cached describes from `serve --workers 2` against bare Starlette with 2 uvicorn workers
serving the very bytes, and against `serve` as one process; side by side in one run.

Three servers on one SQLite cache of `--images` images: statuscache with STATUSCACHE_WORKERS=2, the bare Starlette
route of bench.ceiling under `uvicorn --workers 2` (the same HTTP implementation and event loop `serve` gets:
httptools, uvloop, no proxy-headers middleware), answering the body the service answered for one of the images,
and statuscache as one process. wrk sends the same rotation of cached describes to each, in rounds whose order turns
every round; each ratio is the median of the per-round ratios.

    .venv/bin/python -m bench.workers [--rounds 9] [--duration 3] [--connections 64] [--threads 1] [--images 1000]

On a machine with fewer than three cores, wrk and two workers share them: the figure says how the service keeps up
with the bare framework on the same cores, not what a third core would add. Beside requests per second it prints the
CPU time each server's processes spent per request (from /proc, the workers and their parent): a measure that other
work on the machine disturbs much less than throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import load, seed, servers, wrk
from bench.ceiling import BODY_ENV
from bench.fake import TimedFakeAws

TARGET = 0.8
WORKERS = 2


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of `pid` and its children (the workers), in seconds."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0.0
    for process in (pid, *map(int, children)):
        fields = Path(f"/proc/{process}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Round:
    result: wrk.WrkResult
    cpu_us: float  # CPU time per request, in microseconds


def measure(target: servers.Process, *, script: Path, args: argparse.Namespace) -> Round:
    before = cpu_seconds(target.pid)
    result = wrk.run(
        target.base, script=script, duration=args.duration, connections=args.connections, threads=args.threads
    )
    return Round(result, (cpu_seconds(target.pid) - before) / result.requests * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    # Many short rounds: on a shared machine the other work comes and goes in bursts longer than a round.
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args(argv)
    wrk.ensure_wrk()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-workers-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        images = seed.synthetic(args.images)
        seed.seed_sqlite_sync(workdir / "cache.db", images)
        url = f"sqlite+aiosqlite:///{workdir / 'cache.db'}"
        progress(f"bench.workers: {args.images} cached images; starting the three servers")
        workers = stack.enter_context(servers.start_serve(
            name="serve-workers", database_url=url, aws_endpoint=fake.endpoint_url, log_dir=workdir,
            extra_env={"STATUSCACHE_WORKERS": str(WORKERS)},
        ))  # fmt: skip
        single = stack.enter_context(servers.start_serve(
            name="serve-one", database_url=url, aws_endpoint=fake.endpoint_url, log_dir=workdir,
        ))  # fmt: skip
        paths = [load.describe_path(image.image_id) for image in images]
        body = workdir / "describe.json"
        with httpx.Client(base_url=workers.base, timeout=30.0) as client:
            answer = client.get(paths[len(paths) // 2])
            assert answer.status_code == 200 and answer.headers["x-cache"] == "HIT", answer.text[:200]
            body.write_bytes(answer.content)
            # Every describe served once (by whichever worker): each one's prepared answer is in memory from here on.
            for path in paths:
                assert client.get(path).headers["x-cache"] == "HIT"
        bare = stack.enter_context(servers.start_asgi(
            "bench.ceiling:app", env={BODY_ENV: str(body)}, log_dir=workdir, name="starlette-workers",
            options=["--workers", str(WORKERS), "--lifespan", "on", "--http", "httptools", "--loop", "uvloop",
                     "--no-proxy-headers"],
            ready_path="/healthz",
        ))  # fmt: skip
        script = wrk.write_script(workdir, "describe.lua", wrk.rotation_script(paths, threads=args.threads))
        targets = [workers, bare, single]
        for target in targets:
            wrk.run(target.base, script=script, duration=1, connections=args.connections, threads=args.threads)
        measured: dict[str, list[Round]] = {target.name: [] for target in targets}
        for number in range(args.rounds):
            turn = number % len(targets)
            for target in targets[turn:] + targets[:turn]:
                measured[target.name].append(measure(target, script=script, args=args))
                target.check_alive()
            mine, framework, one = (measured[target.name][-1].result.rps for target in targets)
            progress(f"  round {number + 1}/{args.rounds}: {mine / framework:.2f}x bare, {mine / one:.2f}x one worker")
    report(measured, targets=[target.name for target in targets], args=args)
    return 0


def report(measured: dict[str, list[Round]], *, targets: list[str], args: argparse.Namespace) -> None:
    mine, framework, one = targets
    rounds = range(len(measured[mine]))

    def ratio(name: str, other: str) -> float:
        return statistics.median(measured[name][n].result.rps / measured[other][n].result.rps for n in rounds)

    against_bare, against_one = ratio(mine, framework), ratio(mine, one)
    cpu_ratio = statistics.median(measured[framework][n].cpu_us / measured[mine][n].cpu_us for n in rounds)
    print(
        f"cached describes, {WORKERS} workers against bare Starlette with {WORKERS} uvicorn workers and against one "
        f"worker; wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, {args.images} images, median of "
        f"{args.rounds} rounds in turning order; {os.cpu_count()} cores, load average "
        f"{' '.join(f'{value:.1f}' for value in os.getloadavg())} at the end"
    )
    print(f"{'server':<34}{'req/s':>10}{'p50':>10}{'p99':>10}{'CPU/req':>12}")
    names = {mine: f"statuscache serve, {WORKERS} workers", framework: f"bare Starlette, {WORKERS} workers",
             one: "statuscache serve, 1 process"}  # fmt: skip
    for name in targets:
        rounds_of = measured[name]
        print(
            f"{names[name]:<34}{statistics.median(r.result.rps for r in rounds_of):>10,.0f}"
            f"{statistics.median(r.result.p50_ms for r in rounds_of):>8.2f}ms"
            f"{statistics.median(r.result.p99_ms for r in rounds_of):>8.2f}ms"
            f"{statistics.median(r.cpu_us for r in rounds_of):>10.1f}us"
        )
    verdict = "ok" if against_bare >= TARGET else "MISSED"
    print(f"{WORKERS} workers / bare Starlette {WORKERS} workers: {against_bare:.3f}x req/s ({verdict}, target >= "
          f"{TARGET}x); CPU per request, bare / statuscache: {cpu_ratio:.3f}x")  # fmt: skip
    print(f"{WORKERS} workers / one process: {against_one:.3f}x req/s")


if __name__ == "__main__":
    sys.exit(main())
