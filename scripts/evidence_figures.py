"""The figures of issue 18's note, measured on the demo's builds: storage per kept build (failed, completed), the
AWS calls one capture costs, and how long after the build's end event its evidence was kept.

Usage (from the repository root, after `make install`):

    .venv/bin/python scripts/evidence_figures.py

Runs `statuscache demo` (its scenario takes three minutes) on a SQLite file of its own, waits for the scenario to
end, then reads the evidence table and asks the three image log operations of the build whose stack and log
group cleanup deleted. Prints a Markdown table and the raw rows as JSON.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.demo import scenario
from tests.conftest import free_port

SCENARIO_SECONDS = 185


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        database = Path(folder) / "demo.db"
        env = {
            **os.environ, "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "STATUSCACHE_PORT": str(port)
        }
        demo = subprocess.Popen(
            [sys.executable, "-m", "service", "demo"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            time.sleep(SCENARIO_SECONDS)
            archived = {
                path: httpx.get(f"{base}/v3/images/custom/{scenario.SUCCEEDS}/{path}", params={"limit": "3"})
                for path in ("stackevents", "logstreams", f"logstreams/{scenario.VERSION}%2F1")
            }
        finally:
            demo.terminate()
            demo.wait(30)
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "SELECT image_id, outcome, size_bytes, length(stack_events), aws_calls, cut, "
                "(julianday(captured_at) - julianday(ended_at)) * 86400 FROM evidence ORDER BY image_id"
            ).fetchall()
            logs = dict(
                connection.execute(
                    "SELECT image_id, sum(json_array_length(events)) FROM evidence_logs GROUP BY image_id"
                ).fetchall()
            )
    print("| build | outcome | kept bytes | of which stack events | log events kept | cut | AWS calls | delay s |")
    print("|---|---|---|---|---|---|---|---|")
    for image_id, outcome, size, stack, calls, cut, delay in rows:
        print(f"| {image_id} | {outcome} | {size:,} | {stack or 0:,} | {logs.get(image_id, 0):,} | {bool(cut)} | "
              f"{calls} | {delay:.2f} |")
    print()
    for path, answer in archived.items():
        print(f"after cleanup GET .../{path}: {answer.status_code} X-Cache: {answer.headers.get('x-cache')}")
    print(json.dumps({"rows": rows, "logEvents": logs}))


if __name__ == "__main__":
    main()
