"""List pages against their own ceiling: the bare Starlette route answering the same page bytes.

A page of 100 is ~15 KB, ten times a describe answer, so its fair ceiling is the same route serving a real
page (of median size) rather than the describe ceiling. Both 200s and 304s (the page's ETag as
If-None-Match) are measured in alternation with it, as the describe figures are.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import load, report, servers, wrk
from bench.report import Row

BODY_FILE = "list-ceiling-body.json"


@dataclass(frozen=True)
class Pages:
    paths: list[str]
    bodies: list[bytes]
    etags: list[str]


def fetch_pages(base: str) -> Pages | None:
    """Every page of AVAILABLE images (following nextToken), with its body and ETag; None without the endpoint."""
    paths = load.list_pages(base)
    if not paths:
        return None
    bodies, etags = [], []
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for path in paths:
            response = client.get(path)
            if response.status_code != 200:
                return None
            bodies.append(response.content)
            etags.append(response.headers.get("etag", ""))
    return Pages(paths, bodies, etags)


def median_body(pages: Pages) -> bytes:
    return sorted(pages.bodies, key=len)[len(pages.bodies) // 2]


def measure(
    service: servers.Process,
    *,
    workdir: Path,
    rounds: int,
    duration: float,
    connections: int,
    threads: int,
    progress: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> tuple[list[Row], list[str]]:
    """Rows `list.page100.*` and `list.304.*`, and notes; the service must hold 1,000 cached images."""
    pages = fetch_pages(service.base)
    if pages is None:
        return [Row("list.page100.rps", "n/a (endpoint missing)")], []
    body = median_body(pages)
    (workdir / BODY_FILE).write_bytes(body)
    plain = wrk.write_script(workdir, "list.lua", wrk.rotation_script(pages.paths, threads=threads))
    conditional = wrk.write_script(
        workdir, "list-304.lua",
        wrk.rotation_script(pages.paths, headers=[{"If-None-Match": etag} for etag in pages.etags], threads=threads),
    )
    probe = httpx.get(service.base + pages.paths[0], headers={"If-None-Match": pages.etags[0]}, timeout=10)
    if probe.status_code != 304:
        raise RuntimeError(f"list: If-None-Match with the page's ETag answered {probe.status_code}, not 304")
    workloads = [load.Workload("list", plain), load.Workload("list-304", conditional)]
    with servers.start_ceiling(body_path=workdir / BODY_FILE, log_dir=workdir, name="list-ceiling") as ceiling:
        progress("list pages: warming up both servers")
        for target in (ceiling, service):
            wrk.run(target.base, script=plain, duration=1, connections=connections)
        progress(f"list pages: {rounds} rounds of ceiling/service pairs, {duration:g}s each")
        pairs = load.alternate(
            ceiling=ceiling, service=service, workloads=workloads, rounds=rounds, duration=duration,
            connections=connections, threads=threads, progress=progress,
        )
    rows: list[Row] = []
    for workload, name, floor, p99_bound in (("list", "list.page100", 0.8, 1.5), ("list-304", "list.304", 0.9, None)):
        summary = load.summarize(pairs[workload])
        rows += [
            Row(
                f"{name}.rps", summary.rps, "req/s", summary.ceiling_rps, summary.rps_ratio,
                f">= {floor:.2f}x ceiling", summary.rps_ratio >= floor,
            ),
            Row(f"{name}.p50", summary.p50_ms, "ms", summary.ceiling_p50_ms, summary.p50_ratio),
            Row(
                f"{name}.p99", summary.p99_ms, "ms", summary.ceiling_p99_ms, summary.p99_ratio,
                f"<= {p99_bound:.2f}x ceiling" if p99_bound else "",
                summary.p99_ratio <= p99_bound if p99_bound else None,
            ),
        ]
    sizes = sorted(len(page) for page in pages.bodies)
    notes = [
        f"List: {len(pages.paths)} pages of AVAILABLE images ({sizes[0]}-{sizes[-1]} bytes); wrk rotates over them. "
        f"Its ceiling is the bare route answering the median page ({len(body)} bytes), so both move the same bytes; "
        "`list.304` sends each page's ETag and is answered 304 (the ceiling still sends the page). Compression: not "
        f"in this build. Per round: {rounds_line(pairs)}."
    ]
    return rows, notes


def rounds_line(pairs: dict[str, list[load.Pair]]) -> str:
    return "; ".join(
        f"{name} " + ", ".join(f"{pair.subject.rps / pair.ceiling.rps:.2f}x" for pair in runs)
        for name, runs in pairs.items()
    )


def main() -> None:
    """`python -m bench.lists`: this figure alone, against a fresh service with 1,000 cached images."""
    import tempfile

    from bench import seed

    with tempfile.TemporaryDirectory(prefix="statuscache-bench-lists-") as directory:
        workdir = Path(directory)
        seed.seed_sqlite_sync(workdir / "lists.db", seed.synthetic(1000))
        with servers.start_serve(
            name="lists", database_url=f"sqlite+aiosqlite:///{workdir / 'lists.db'}",
            aws_endpoint="http://127.0.0.1:9", log_dir=workdir,
        ) as service:
            rows, notes = measure(service, workdir=workdir, rounds=3, duration=5.0, connections=32, threads=2)
    print(report.table(rows))
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
