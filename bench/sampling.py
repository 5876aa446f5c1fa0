"""Where a server's time goes under load: py-spy samples of the process during one wrk run, summarized (what
`python -m bench` prints when a target is missed; bench.profile breaks a cached answer down by feature)."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import wrk
from bench.servers import Process


@dataclass(frozen=True)
class Profile:
    samples: int
    self_top: list[tuple[str, float]]  # (frame, share of samples)
    inclusive_top: list[tuple[str, float]]
    thread_share: dict[str, float]
    result: wrk.WrkResult


def py_spy() -> str:
    """Where py-spy is: on the PATH, else beside this Python (the dev extra installs it into the venv)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def available() -> bool:
    return Path(py_spy()).exists()


# Frames every sample of the main thread passes through: they say nothing about where the time goes.
_SCAFFOLDING = (
    "(<frozen runpy>)", "(threading.py)", "(service/__main__.py)", "(asyncio/runners.py)",
    "BaseEventLoop.run_forever", "BaseEventLoop.run_until_complete", "BaseEventLoop._run_once", "Handle._run",
)


def _thread_kind(name: str) -> str:
    """'thread (4816): Thread-460 (_connection_worker_thread)' -> 'Thread (_connection_worker_thread)'."""
    name = re.sub(r"^thread \(\d+\): ", "", name)
    return re.sub(r"^(Thread|asyncio)[-_]\d+", r"\1", name)


def stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw output ("frame;frame;... count" lines): each stack's frames, outermost first, and its samples."""
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)


def summarize(raw: str, *, top: int) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]], dict[str, float]]:
    """Collapsed stacks ("thread;frame;frame count" lines) -> self and inclusive shares per frame, per thread."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in stacks(raw):
        total += count
        threads[_thread_kind(frames[0])] += count
        self_counts[frames[-1]] += count
        for frame in set(frames[1:]):
            if not any(marker in frame for marker in _SCAFFOLDING):
                inclusive[frame] += count
    if total == 0:
        return 0, [], [], {}
    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, n / total) for frame, n in counter.most_common(top)]

    return total, share(self_counts), share(inclusive), {name: n / total for name, n in threads.most_common(5)}


def profile_during_load(
    service: Process, *, script: Path, workdir: Path, duration: float, connections: int, top: int = 15
) -> Profile:
    output = workdir / f"profile-{service.name}.txt"
    command = [
        py_spy(), "record", "--pid", str(service.pid), "--duration", f"{max(1, int(duration))}",
        "--format", "raw", "--rate", "200", "--nolineno", "--threads", "--gil", "--output", str(output),
    ]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        result = wrk.run(service.base, script=script, duration=duration, connections=connections)
    except BaseException:
        spy.kill()
        spy.communicate()
        raise
    try:
        _, stderr = spy.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.communicate()
        raise
    if spy.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {stderr.decode(errors='replace')[-500:]}")
    samples, self_top, inclusive_top, threads = summarize(output.read_text(), top=top)
    return Profile(samples, self_top, inclusive_top, threads, result)


def render(profile: Profile) -> str:
    lines = [
        f"py-spy --gil: {profile.samples} samples holding the GIL, of the service under the describe load "
        f"({profile.result.rps:.0f} req/s while sampled; sampling slows it)",
        "threads: " + ", ".join(f"{name} {share:.0%}" for name, share in profile.thread_share.items()),
        "top frames by self time:",
    ]
    lines += [f"  {share:6.1%}  {frame}" for frame, share in profile.self_top]
    lines.append("top frames by inclusive time:")
    lines += [f"  {share:6.1%}  {frame}" for frame, share in profile.inclusive_top]
    return "\n".join(lines)
