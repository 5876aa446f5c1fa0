"""CLI: statuscache serve | poll | sync --once | migrate | demo. Thin: parses, builds Settings, calls the runner."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from service import runner
from service.errors import ConfigurationError, SchemaError
from service.settings import Settings, from_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statuscache", description=__doc__)
    parser.add_argument("--database-url", help="env STATUSCACHE_DATABASE_URL")
    parser.add_argument("--regions", help="comma list; env STATUSCACHE_REGIONS")
    parser.add_argument("--log-level", help="env STATUSCACHE_LOG_LEVEL")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="the API and the poller in one process")
    _listen_arguments(serve)
    serve.add_argument("--no-poll", action="store_true", help="API only (a replica); env STATUSCACHE_NO_POLL=1")

    commands.add_parser("poll", help="the poller alone")
    sync = commands.add_parser("sync", help="reconcile against AWS")
    sync.add_argument("--once", action="store_true", help="one pass, then exit")
    commands.add_parser("migrate", help="apply database migrations")
    demo = commands.add_parser(
        "demo", help="try it without AWS: serve invented images from a local fake AWS (needs the [demo] extra)"
    )
    _listen_arguments(demo)
    return parser


def _listen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="env STATUSCACHE_HOST (127.0.0.1)")
    parser.add_argument("--port", type=int, help="env STATUSCACHE_PORT (8080)")


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    if args.database_url:
        env["STATUSCACHE_DATABASE_URL"] = args.database_url
    if args.regions:
        env["STATUSCACHE_REGIONS"] = args.regions
    if args.log_level:
        env["STATUSCACHE_LOG_LEVEL"] = args.log_level
    return from_env(env).with_overrides(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        no_poll=True if getattr(args, "no_poll", False) else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigurationError as exc:
        print(f"statuscache: {exc}", file=sys.stderr)
        return 2
    runner.configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            runner.serve(settings)
        elif args.command == "poll":
            asyncio.run(runner.poll(settings))
        elif args.command == "sync":
            if args.once:
                return asyncio.run(runner.sync_once(settings))
            asyncio.run(runner.poll(settings))
        elif args.command == "migrate":
            asyncio.run(runner.migrate(settings))
        elif args.command == "demo":
            _demo(settings)
    except (SchemaError, ConfigurationError) as exc:
        print(f"statuscache: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _demo(settings: Settings) -> None:
    # The one place production code reaches the demo package: lazily, and only when asked for it by name.
    try:
        from service.demo import run
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] == "service":
            raise
        # Not ours: a plain install, without what the [demo] extra brings (moto, werkzeug, boto3).
        raise ConfigurationError(
            f"the demo needs the [demo] extra ({exc.name} is not installed): pip install 'statuscache[demo]'"
        ) from exc
    run.serve(settings)


if __name__ == "__main__":
    sys.exit(main())
