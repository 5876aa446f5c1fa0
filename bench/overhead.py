"""python -m bench.overhead: what a change costs the hot path, against an earlier revision, side by side.

Two `serve` processes on identically seeded SQLite caches: one from the working tree, one from an earlier
revision (the baseline, exported with `git archive` into a temporary directory; default: the merge-base with
main; `--baseline-tree DIR` takes a tree as it is). wrk loads each in turn, round after round, the order
flipping every round, and two figures come out of every run:

- requests per second, as `make bench` measures them; on a shared machine they swing by tens of percent from
  one run to the next, so only the median of many per-round ratios means anything;
- the server's CPU time per request (utime + stime of the process, from /proc, over the requests wrk counted):
  what the code costs, far steadier under other load than a throughput is. At saturation on one core a
  server's throughput is the inverse of it.

Also measured on the working tree's server: the list page with and without `Accept-Encoding: gzip`, and the
sizes of its pages.

    .venv/bin/python -m bench.overhead [--baseline REV | --baseline-tree DIR] [--rounds 10] [--duration 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import load, seed, servers, wrk
from bench.fake import TimedFakeAws

# Importing the baseline's package instead of the editable install's: the editable finder sits in
# sys.meta_path ahead of sys.path, and the working directory (the repository) heads sys.path; both go.
FROM_TREE = (
    "import sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
)
BASELINE_MAIN = (
    FROM_TREE + "import runpy; sys.argv[0] = 'statuscache'; "
    "runpy.run_module('service', run_name='__main__', alter_sys=True)"
)
TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export(revision: str, into: Path) -> Path:
    """The tree of `revision`, exported (not a worktree: nothing in the repository changes)."""
    archive = subprocess.run(["git", "archive", revision], cwd=servers.REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def runnable(tree: Path) -> Path:
    # What the wheel's package-dir does: the Alembic scripts at the top are service.migrations.
    if not (tree / "service" / "migrations").exists():
        shutil.copytree(tree / "migrations", tree / "service" / "migrations")
    return tree


def seed_in_tree(tree: Path, database: Path, images: int) -> None:
    """Seed `database` as bench.seed does, but with `tree`'s code (and so `tree`'s schema)."""
    program = FROM_TREE + (
        "from pathlib import Path; from bench import seed; "
        "seed.seed_sqlite_sync(Path(sys.argv[1]), seed.synthetic(int(sys.argv[2])))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-c", program, str(database), str(images)], cwd=tree, env=env, check=True)


def merge_base() -> str:
    return subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=servers.REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_tree(
    *, tree: Path, database_url: str, aws_endpoint: str, log_dir: Path, name: str = "baseline"
) -> servers.Process:
    """`serve` from another tree than the working tree's (the editable install's)."""
    port = servers.free_port()
    env = servers.serve_env(database_url=database_url, aws_endpoint=aws_endpoint)
    env["PYTHONPATH"] = str(tree)
    process = servers.Process(
        name=name,
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


@dataclass(frozen=True)
class Run:
    rps: float
    p99_ms: float
    cpu_us: float  # server CPU per request


def measure(target: servers.Process, script: Path, *, duration: float, connections: int, threads: int) -> Run:
    before = cpu_seconds(target.pid)
    result = wrk.run(target.base, script=script, duration=duration, connections=connections, threads=threads)
    spent = cpu_seconds(target.pid) - before
    target.check_alive()
    return Run(result.rps, result.p99_ms, spent / result.requests * 1e6)


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(a / b for a, b in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--baseline", help="git revision to compare with (default: merge-base with main)")
    parser.add_argument("--baseline-tree", type=Path, help="a directory holding the baseline's tree instead")
    parser.add_argument("--current-tree", type=Path, help="a directory to run instead of the working tree")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-list", action="store_true", help="skip the list page's gzip figures")
    args = parser.parse_args(argv)
    threads = 2
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp, TimedFakeAws() as fake:
        workdir = Path(tmp)
        if args.baseline_tree:
            label = str(args.baseline_tree)
            tree = runnable(args.baseline_tree.resolve())
        else:
            label = args.baseline or merge_base()
            (workdir / "baseline").mkdir()
            tree = runnable(export(label, workdir / "baseline"))
        progress(f"baseline: {label}; seeding {args.images} images twice")
        images = seed.synthetic(args.images)
        # Seeded twice rather than copied: a copy of the file alone would miss what is still in its WAL.
        seed.seed_sqlite_sync(workdir / "current.db", images)
        # By the baseline's own code: its schema is its migrations' head, which may be older than ours.
        seed_in_tree(tree, workdir / "baseline.db", args.images)
        ids = [image.image_id for image in images]
        paths = [load.describe_path(image_id) for image_id in ids]
        rotate = wrk.write_script(workdir, "rotate.lua", wrk.rotation_script(paths, threads=threads))
        with (
            (
                start_tree(
                    tree=runnable(args.current_tree.resolve()), name="current", log_dir=workdir,
                    database_url=f"sqlite+aiosqlite:///{workdir / 'current.db'}", aws_endpoint=fake.endpoint_url,
                )
                if args.current_tree
                else servers.start_serve(
                    name="current", database_url=f"sqlite+aiosqlite:///{workdir / 'current.db'}",
                    aws_endpoint=fake.endpoint_url, log_dir=workdir,
                )
            ) as current,
            start_tree(
                tree=tree, database_url=f"sqlite+aiosqlite:///{workdir / 'baseline.db'}",
                aws_endpoint=fake.endpoint_url, log_dir=workdir,
            ) as baseline,
        ):
            etag_scripts = {}
            for name, target in (("current", current), ("baseline", baseline)):
                etags = load.describe_all(target.base, ids).etags
                headers = [{"If-None-Match": etag} for etag in etags]
                etag_scripts[name] = wrk.write_script(
                    workdir, f"etag-{name}.lua", wrk.rotation_script(paths, headers=headers, threads=threads)
                )
            pages = [] if args.no_list else load.list_pages(current.base) or []
            list_plain = wrk.write_script(workdir, "list.lua", wrk.rotation_script(pages, threads=threads))
            list_gzip = wrk.write_script(
                workdir, "list-gzip.lua",
                wrk.rotation_script(pages, headers=[{"Accept-Encoding": "gzip"} for _ in pages], threads=threads),
            )

            def run(target: servers.Process, script: Path) -> Run:
                return measure(
                    target, script, duration=args.duration, connections=args.connections, threads=threads
                )

            for target in (baseline, current):
                run(target, rotate)  # warm-up
            workloads: dict[str, tuple[Path, Path]] = {
                "describe.cached": (rotate, rotate),
                "describe.304": (etag_scripts["baseline"], etag_scripts["current"]),
            }
            pairs: dict[str, list[tuple[Run, Run]]] = {name: [] for name in workloads}
            gzip_pairs: list[tuple[Run, Run]] = []
            for round_index in range(args.rounds):
                flip = round_index % 2 == 1
                for name, (baseline_script, current_script) in workloads.items():
                    # The order flips every round, so a drift of the machine within a round favours neither.
                    if flip:
                        s = run(current, current_script)
                        b = run(baseline, baseline_script)
                    else:
                        b = run(baseline, baseline_script)
                        s = run(current, current_script)
                    pairs[name].append((b, s))
                    progress(
                        f"  round {round_index + 1}/{args.rounds} {name:<16} baseline {b.rps:7.0f} req/s "
                        f"{b.cpu_us:5.1f} us/req | current {s.rps:7.0f} req/s {s.cpu_us:5.1f} us/req "
                        f"({s.rps / b.rps:.3f}x rps, {s.cpu_us / b.cpu_us:.3f}x cpu)"
                    )
                if pages:
                    gzip_pairs.append((run(current, list_plain), run(current, list_gzip)))
            with httpx.Client(base_url=current.base, timeout=30) as client:
                plain_sizes = [len(client.get(path, headers={"Accept-Encoding": "identity"}).content) for path in pages]
                # httpx decodes gzip: the size on the wire is the Content-Length.
                gzip_sizes = [
                    int(client.get(path, headers={"Accept-Encoding": "gzip"}).headers["content-length"])
                    for path in pages
                ]
    print(f"baseline {label}, {args.rounds} rounds x {args.duration:g}s, wrk -t{threads} -c{args.connections}")
    print(f"{'figure':<22} {'baseline':>10} {'current':>10} {'ratio':>8}   per-round ratios")
    for name, runs in pairs.items():
        for field, unit in (("rps", "req/s"), ("cpu_us", "us/req"), ("p99_ms", "ms p99")):
            values = [(getattr(s, field), getattr(b, field)) for b, s in runs]
            print(
                f"{name + '.' + field:<22} {statistics.median(v for _, v in values):>10.1f} "
                f"{statistics.median(v for v, _ in values):>10.1f} {median_ratio(values):>7.3f}x   "
                + " ".join(f"{a / b:.2f}" for a, b in values) + f"  ({unit})"
            )
    if gzip_pairs:
        plain = statistics.median(p.rps for p, _ in gzip_pairs)
        zipped = statistics.median(z.rps for _, z in gzip_pairs)
        print(
            f"list.page100 plain {plain:.0f} req/s, gzip {zipped:.0f} req/s "
            f"({median_ratio([(z.rps, p.rps) for p, z in gzip_pairs]):.3f}x); "
            f"cpu/request plain {statistics.median(p.cpu_us for p, _ in gzip_pairs):.1f} us, "
            f"gzip {statistics.median(z.cpu_us for _, z in gzip_pairs):.1f} us"
        )
        print(f"list page sizes: plain {plain_sizes} bytes, gzip {gzip_sizes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
