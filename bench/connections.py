"""What the bounded HTTP protocol costs: uvicorn's httptools protocol and ours, side by side, on the cheapest
possible answer (a fixed body), so the protocol's own work is the largest share it can ever be.

    python -m bench.connections [--seconds 5] [--rounds 3]

Each server runs in its own process with uvloop; wrk alternates between them round by round, and the
figure is the ratio of their requests per second in the same run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import wrk
from tests.conftest import free_port

SERVER = r"""
import sys, uvicorn
from service.api.connections import bounded_protocol

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})

bounded = sys.argv[2] == "bounded"
http = bounded_protocol(max_request_line_bytes=8192, max_header_bytes=32768) if bounded else "httptools"
uvicorn.run(app, port=int(sys.argv[1]), http=http, loop="uvloop", log_level="warning", access_log=False)
"""


def start(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), kind], env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(base)
            return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers = {kind: start(kind) for kind in ("httptools", "bounded")}
    rates: dict[str, list[float]] = {kind: [] for kind in servers}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # Headers as a browser-ish client sends them: the protocol's per-header work is counted.
            headers = {"Accept": "application/json", "User-Agent": "bench", "If-None-Match": '"1.2"', "X-Id": "1"}
            script = wrk.write_script(
                Path(scratch), "rotation.lua", wrk.rotation_script(["/"], headers=[headers], threads=1)
            )
            for _ in range(args.rounds):
                for kind, (_process, base) in servers.items():
                    result = wrk.run(base, script=script, connections=32, threads=1, duration=args.seconds)
                    rates[kind].append(result.rps)
    finally:
        for process, _base in servers.values():
            process.terminate()
            process.wait(timeout=10)
    for kind, values in rates.items():
        print(f"{kind:<10} req/s per round: {', '.join(f'{value:,.0f}' for value in values)}")
    ratio = statistics.median(rates["bounded"]) / statistics.median(rates["httptools"])
    print(f"bounded / httptools (median of rounds): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
