"""The result table (a stable plain-text format, one row per figure), machine facts, and docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
LATEST = "## Latest run"
COLUMNS = ("figure", "value", "unit", "ceiling", "ratio", "target", "result")
WIDTHS = (30, 10, 12, 9, 7, 24, 6)


@dataclass(frozen=True)
class Row:
    figure: str
    value: float | int | str
    unit: str = ""
    ceiling: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None

    @property
    def result(self) -> str:
        return "-" if self.ok is None else "PASS" if self.ok else "MISS"


def _number(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    lines = ["  ".join(title.ljust(width) for title, width in zip(COLUMNS, WIDTHS, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in WIDTHS))
    for row in rows:
        cells = (
            row.figure,
            _number(row.value),
            row.unit,
            _number(row.ceiling),
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target or "-",
            row.result,
        )
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, WIDTHS, strict=True)).rstrip())
    return "\n".join(lines)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    wrk_version = "unknown"
    try:
        completed = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=5)
        found = re.search(r"wrk (\S+)", completed.stdout + completed.stderr)
        wrk_version = found.group(1) if found else wrk_version
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load_average(),
        "cpus": str(os.cpu_count() or "?"),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk_version,
    }


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows up here, and in the absolute figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def machine_line(facts: dict[str, str]) -> str:
    return (
        f"{facts['date']}; {facts['cpus']} CPUs ({facts['cpu']}), {facts['memory']}; Python {facts['python']}; "
        f"Linux {facts['kernel']}; wrk {facts['wrk']}; load average {facts['load']} at start"
    )


def write_doc(
    *, rows: list[Row], facts: dict[str, str], settings: str, notes: list[str], profile: str | None = None
) -> Path:
    """Replace the "Latest run" section of docs/BENCHMARKS.md (everything after its heading) with this run."""
    section = [
        LATEST,
        "",
        f"### {facts['date'][:10]}",
        "",
        f"Machine: {machine_line(facts)}.",
        "",
        f"Run: {settings}.",
        "",
        "```",
        table(rows),
        "```",
    ]
    if notes:
        section += ["", *[f"- {note}" for note in notes]]
    if profile:
        section += ["", "Where the service's time goes under the cached describe load:", "", "```", profile, "```"]
    text = DOC.read_text() if DOC.exists() else ""
    head = text.split(LATEST, 1)[0].rstrip() if LATEST in text else text.rstrip()
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text((head + "\n\n" if head else "") + "\n".join(section) + "\n")
    return DOC
