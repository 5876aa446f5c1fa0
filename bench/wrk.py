"""wrk as the load generator: lua scripts that rotate over paths, one run, and its parsed result."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^([\d.]+)(us|ms|s|m|h)$")


class WrkError(RuntimeError):
    """wrk failed, or saw errors or non-2xx/3xx answers."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int
    output: str


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def rotation_script(paths: list[str], *, headers: list[dict[str, str]] | None = None, threads: int) -> str:
    """A wrk script sending `paths` in turn (with `headers[i]` on path i); thread k starts at k and steps by threads.

    Requests are pre-formatted once in init(), so the per-request work in wrk is a table lookup.
    """
    if headers is not None and len(headers) != len(paths):
        raise ValueError("one header set per path")
    lines = ["local paths = {"]
    lines += [f"  {lua_string(path)}," for path in paths]
    lines.append("}")
    lines.append("local headers = {")
    for index in range(len(paths)):
        entries = (headers[index] if headers else {}).items()
        lines.append("  {" + ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in entries) + "},")
    lines.append("}")
    lines.append(
        f"""
local next_thread = 0
function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

local requests = {{}}
local position = 0
function init(args)
  for i = 1, #paths do
    requests[i] = wrk.format("GET", paths[i], headers[i])
  end
  position = (thread_index or 0) % #paths
end

function request()
  position = position + {threads}
  if position > #paths then position = ((position - 1) % #paths) + 1 end
  return requests[position]
end
"""
    )
    return "\n".join(lines)


def write_script(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: run scripts/ensure-wrk (make bench does)")
    return path


def run(
    base_url: str,
    *,
    script: Path,
    connections: int = 32,
    threads: int = 2,
    duration: float = 5.0,
    timeout: float = 5.0,
    allow_errors: bool = False,
) -> WrkResult:
    """One wrk run with --latency; raises WrkError on non-2xx/3xx answers or socket errors unless allowed."""
    command = [
        ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", f"--timeout={timeout:g}s",
        "--latency", "-s", str(script), base_url,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if completed.returncode != 0:
        raise WrkError(f"wrk exited {completed.returncode}: {completed.stderr.strip() or completed.stdout.strip()}")
    result = parse(completed.stdout)
    if not allow_errors and (result.non_2xx_3xx or result.socket_errors):
        raise WrkError(
            f"wrk against {base_url} saw {result.non_2xx_3xx} non-2xx/3xx answers and {result.socket_errors} "
            f"socket errors:\n{completed.stdout}"
        )
    return result


def _seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise WrkError(f"cannot read a wrk duration from {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse(output: str) -> WrkResult:
    """Requests/sec, requests, the 50% and 99% lines of the latency distribution, and error counts."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in ", output, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if rps is None or total is None or p50 is None or p99 is None:
        raise WrkError(f"cannot parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_seconds(p50.group(1)) * 1000,
        p99_ms=_seconds(p99.group(1)) * 1000,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        output=output,
    )
