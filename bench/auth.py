"""python -m bench.auth: what authentication costs the cached describe, measured side by side with no authentication.

Three `serve` processes on copies of one seeded SQLite cache: anonymous (no tokens file: authentication is not
in the stack), with a tokens file at WARNING (the check alone: header scan, SHA-256, lookup, compare_digest), and
with a tokens file at INFO (the check plus the per-request `caller=` log line, written to a file). wrk sends the
same requests, Authorization header included, to each, in rounds A B C A B C, and every figure is the median of
the per-round ratios to the anonymous run of the same round. A fourth run floods the tokens server with a wrong
token: refusals per second, against the anonymous cached describe.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import statistics
import sys
import tempfile
from pathlib import Path

from bench import load, seed, servers, wrk
from bench.fake import TimedFakeAws

TOKEN = "sct_bench_" + "t" * 40
WRONG = "sct_bench_" + "w" * 40


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    wrk.ensure_wrk()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="statuscache-bench-auth-")))
        fake = TimedFakeAws()
        fake.start()
        stack.callback(fake.stop)
        images = seed.synthetic(args.images)
        for name in ("anonymous", "quiet", "logged"):
            seed.seed_sqlite_sync(workdir / f"{name}.db", images)
        tokens = workdir / "tokens"
        tokens.write_text(f"bench {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
        auth_env = {"STATUSCACHE_API_TOKENS_FILE": str(tokens)}
        paths = [load.describe_path(image.image_id) for image in images]

        def serve(name: str, extra: dict[str, str]) -> servers.Process:
            return stack.enter_context(
                servers.start_serve(
                    name=name, database_url=f"sqlite+aiosqlite:///{workdir / (name + '.db')}",
                    aws_endpoint=fake.endpoint_url, log_dir=workdir, extra_env=extra,
                )
            )

        subjects = {
            "anonymous": serve("anonymous", {}),
            "tokens": serve("quiet", auth_env),
            "tokens+log": serve("logged", auth_env | {"STATUSCACHE_LOG_LEVEL": "INFO"}),
        }
        headers = [{"Authorization": f"Bearer {TOKEN}"}] * len(paths)
        script = wrk.write_script(workdir, "auth.lua", wrk.rotation_script(paths, headers=headers, threads=2))
        wrong = [{"Authorization": f"Bearer {WRONG}"}] * len(paths)
        refused_script = wrk.write_script(workdir, "wrong.lua", wrk.rotation_script(paths, headers=wrong, threads=2))
        progress("warming up: every id once per server, then 1 s of wrk each")
        for name, process in subjects.items():
            # describe_all sends no token: warm the protected ones through wrk instead (same requests).
            warm = wrk.run(process.base, script=script, duration=1, connections=args.connections, allow_errors=True)
            progress(f"  {name}: {warm.non_2xx_3xx} non-2xx of {warm.requests}")
        rps: dict[str, list[float]] = {name: [] for name in [*subjects, "refused"]}
        p99: dict[str, list[float]] = {name: [] for name in [*subjects, "refused"]}
        for round_index in range(args.rounds):
            for name, process in subjects.items():
                result = wrk.run(process.base, script=script, duration=args.duration, connections=args.connections)
                rps[name].append(result.rps)
                p99[name].append(result.p99_ms)
            result = wrk.run(
                subjects["tokens"].base, script=refused_script, duration=args.duration,
                connections=args.connections, allow_errors=True,
            )
            rps["refused"].append(result.rps)
            p99["refused"].append(result.p99_ms)
            progress(
                f"  round {round_index + 1}/{args.rounds}: "
                + ", ".join(f"{name} {values[-1]:.0f} req/s" for name, values in rps.items())
            )
        fake_calls = fake.total_calls()
    print(f"python -m bench.auth --rounds {args.rounds} --duration {args.duration:g} --images {args.images}; "
          f"wrk -t2 -c{args.connections}")
    print(f"{'figure':<24}{'req/s':>10}{'p99 ms':>10}{'rps vs anonymous':>20}{'p99 vs anonymous':>20}")
    for name in rps:
        rps_ratio = statistics.median(a / b for a, b in zip(rps[name], rps["anonymous"], strict=True))
        p99_ratio = statistics.median(a / b for a, b in zip(p99[name], p99["anonymous"], strict=True))
        print(
            f"{'describe.' + name:<24}{statistics.median(rps[name]):>10.0f}{statistics.median(p99[name]):>10.2f}"
            f"{rps_ratio:>19.2f}x{p99_ratio:>19.2f}x"
        )
    print(f"AWS calls during the run: {fake_calls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
