"""python -m bench.overhead: what instrumentation costs the hot path, as a ratio measured side by side.

Three servers on one seeded SQLite cache: the ceiling (bench/ceiling.py), `serve` from an earlier revision of
this repository (the baseline, exported with `git archive` into a temporary directory; default: the merge-base
with main), and `serve` from the working tree. wrk runs each workload against the three in turn, round after
round (C B S, C B S, ...), so machine noise hits all three alike; a figure is the median over rounds of the
per-round ratio service / baseline. Also measured: the list page with and without `Accept-Encoding: gzip`, and
its sizes, on the working tree's server.

    .venv/bin/python -m bench.overhead [--baseline REV] [--rounds 5] [--duration 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench import load, seed, servers, wrk
from bench.fake import TimedFakeAws

# Importing the baseline's package instead of the editable install's: the editable finder sits in
# sys.meta_path ahead of sys.path, and the working directory (the repository) heads sys.path; both go.
BASELINE_MAIN = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "sys.argv[0] = 'statuscache'; "
    "runpy.run_module('service', run_name='__main__', alter_sys=True)"
)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export(revision: str, into: Path) -> Path:
    """The tree of `revision`, exported (not a worktree: nothing in the repository changes)."""
    archive = subprocess.run(["git", "archive", revision], cwd=servers.REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    # What the wheel's package-dir does: the Alembic scripts at the top are service.migrations.
    shutil.copytree(into / "migrations", into / "service" / "migrations")
    return into


def merge_base() -> str:
    return subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=servers.REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def start_baseline(*, tree: Path, database_url: str, aws_endpoint: str, log_dir: Path) -> servers.Process:
    port = servers.free_port()
    env = servers.serve_env(database_url=database_url, aws_endpoint=aws_endpoint)
    env["PYTHONPATH"] = str(tree)
    process = servers.Process(
        name="baseline",
        command=[sys.executable, "-c", BASELINE_MAIN, "serve", "--no-poll", "--port", str(port)],
        env=env,
        log_dir=log_dir,
        port=port,
    )
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


def median_ratio(values: list[tuple[float, float]]) -> float:
    return statistics.median(a / b for a, b in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--baseline", help="git revision to compare with (default: merge-base with main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-list", action="store_true", help="skip the list page's gzip figures")
    args = parser.parse_args(argv)
    revision = args.baseline or merge_base()
    threads = 2
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp, TimedFakeAws() as fake:
        workdir = Path(tmp)
        (workdir / "baseline").mkdir()
        tree = export(revision, workdir / "baseline")
        progress(f"baseline: {revision[:12]} exported; seeding {args.images} images")
        images = seed.synthetic(args.images)
        # Seeded twice rather than copied: a copy of the file alone would miss what is still in its WAL.
        seed.seed_sqlite_sync(workdir / "current.db", images)
        seed.seed_sqlite_sync(workdir / "baseline.db", images)
        ids = [image.image_id for image in images]
        paths = [load.describe_path(image_id) for image_id in ids]
        rotate = wrk.write_script(workdir, "rotate.lua", wrk.rotation_script(paths, threads=threads))
        with (
            servers.start_serve(
                name="current", database_url=f"sqlite+aiosqlite:///{workdir / 'current.db'}",
                aws_endpoint=fake.endpoint_url, log_dir=workdir,
            ) as current,
            start_baseline(
                tree=tree, database_url=f"sqlite+aiosqlite:///{workdir / 'baseline.db'}",
                aws_endpoint=fake.endpoint_url, log_dir=workdir,
            ) as baseline,
        ):
            bodies = load.describe_all(current.base, ids).bodies
            load.describe_all(baseline.base, ids)
            body = sorted(bodies, key=len)[len(bodies) // 2]
            (workdir / "ceiling-body.json").write_bytes(body)
            etag_scripts = {}
            for name, target in (("current", current), ("baseline", baseline)):
                etags = load.describe_all(target.base, ids).etags
                headers = [{"If-None-Match": etag} for etag in etags]
                etag_scripts[name] = wrk.write_script(
                    workdir, f"etag-{name}.lua", wrk.rotation_script(paths, headers=headers, threads=threads)
                )
            pages = load.list_pages(current.base) or []
            gzip_headers = [{"Accept-Encoding": "gzip"} for _ in pages]
            list_plain = wrk.write_script(workdir, "list.lua", wrk.rotation_script(pages, threads=threads))
            list_gzip = wrk.write_script(
                workdir, "list-gzip.lua", wrk.rotation_script(pages, headers=gzip_headers, threads=threads)
            )
            with servers.start_ceiling(body_path=workdir / "ceiling-body.json", log_dir=workdir) as ceiling:
                for target in (ceiling, baseline, current):
                    wrk.run(target.base, script=rotate, duration=1, connections=args.connections)
                figures: dict[str, list[tuple[float, float]]] = {
                    "describe.cached.rps": [], "describe.cached.p99": [], "describe.304.rps": [],
                    "describe.304.p99": [], "list.gzip_vs_plain.rps": [],
                }
                absolute: dict[str, list[float]] = {}

                def run(name: str, base: str, script: Path) -> wrk.WrkResult:
                    result = wrk.run(
                        base, script=script, duration=args.duration, connections=args.connections, threads=threads
                    )
                    absolute.setdefault(f"{name}.rps", []).append(result.rps)
                    absolute.setdefault(f"{name}.p99", []).append(result.p99_ms)
                    return result

                def pair(name: str, scripts: tuple[Path, Path], *, current_first: bool) -> tuple[wrk.WrkResult, ...]:
                    # The order flips every round, so a drift of the machine within a round favours neither.
                    if current_first:
                        s = run(f"current.{name}", current.base, scripts[1])
                        return run(f"baseline.{name}", baseline.base, scripts[0]), s
                    b = run(f"baseline.{name}", baseline.base, scripts[0])
                    return b, run(f"current.{name}", current.base, scripts[1])

                for round_index in range(args.rounds):
                    flip = round_index % 2 == 1
                    c = run("ceiling", ceiling.base, rotate)
                    b, s = pair("describe", (rotate, rotate), current_first=flip)
                    figures["describe.cached.rps"].append((s.rps, b.rps))
                    figures["describe.cached.p99"].append((s.p99_ms, b.p99_ms))
                    b304, s304 = pair("304", (etag_scripts["baseline"], etag_scripts["current"]), current_first=flip)
                    figures["describe.304.rps"].append((s304.rps, b304.rps))
                    figures["describe.304.p99"].append((s304.p99_ms, b304.p99_ms))
                    if pages and not args.no_list:
                        plain = run("current.list", current.base, list_plain)
                        zipped = run("current.list_gzip", current.base, list_gzip)
                        figures["list.gzip_vs_plain.rps"].append((zipped.rps, plain.rps))
                    progress(
                        f"  round {round_index + 1}/{args.rounds}: ceiling {c.rps:.0f} | describe baseline "
                        f"{b.rps:.0f} current {s.rps:.0f} ({s.rps / b.rps:.3f}x) | 304 baseline {b304.rps:.0f} "
                        f"current {s304.rps:.0f} ({s304.rps / b304.rps:.3f}x)"
                    )
                    current.check_alive()
                    baseline.check_alive()
            with httpx.Client(base_url=current.base, timeout=30) as client:
                plain_sizes = [len(client.get(path).content) for path in pages]
                # httpx decodes gzip: the size on the wire is the Content-Length.
                gzip_sizes = [
                    int(client.get(path, headers={"Accept-Encoding": "gzip"}).headers["content-length"])
                    for path in pages
                ]
    print(f"baseline {revision[:12]}, {args.rounds} rounds x {args.duration:g}s, wrk -t{threads} -c{args.connections}")
    for name, pairs in figures.items():
        if pairs:
            print(f"{name:<28} {median_ratio(pairs):.3f}x   (per round: "
                  + ", ".join(f"{a / b:.3f}" for a, b in pairs) + ")")
    for name, values in sorted(absolute.items()):
        print(f"{name:<28} median {statistics.median(values):.2f}")
    if pages:
        print(f"list page sizes: plain {plain_sizes} bytes, gzip {gzip_sizes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
