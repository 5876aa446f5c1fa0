"""CLI: statuscache serve | poll | sync --once | migrate | demo | token create, and the client commands
(describe-image, list-images, image-history, watch, transitions, builds). Thin: parses, then builds Settings
and calls the runner, or hands a client command to service.client.cli, which only talks HTTP to a running
service."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback

from service.client import cli
from service.errors import REFUSALS, ConfigurationError, DatabaseUnavailable, StartupFailed
from service.settings import Settings, from_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statuscache", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", help="env STATUSCACHE_DATABASE_URL")
    parser.add_argument("--regions", help="comma list; env STATUSCACHE_REGIONS")
    parser.add_argument("--log-level", help="env STATUSCACHE_LOG_LEVEL")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="the API and the poller in one process")
    _listen_arguments(serve)
    serve.add_argument("--no-poll", action="store_true", help="API only (a replica); env STATUSCACHE_NO_POLL=1")
    serve.add_argument(
        "--workers", type=_at_least_one, help="processes serving the port, one of them polling; env STATUSCACHE_WORKERS"
    )

    commands.add_parser("poll", help="the poller alone")
    sync = commands.add_parser("sync", help="reconcile against AWS")
    sync.add_argument("--once", action="store_true", help="one pass, then exit")
    commands.add_parser("migrate", help="apply database migrations")
    demo = commands.add_parser(
        "demo", help="try it without AWS: serve invented images from a local fake AWS (needs the [demo] extra)"
    )
    _listen_arguments(demo)
    token = commands.add_parser("token", help="API tokens for STATUSCACHE_API_TOKENS_FILE")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="print a new token (once) and the line to add to the tokens file; needs nothing running"
    )
    create.add_argument("name", help="the caller's name, as logged with each of its requests")
    cli.add_commands(commands)
    return parser


def _listen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="env STATUSCACHE_HOST (127.0.0.1)")
    parser.add_argument("--port", type=int, help="env STATUSCACHE_PORT (8080)")


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return number


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
        workers=getattr(args, "workers", None),
    )


def create_token(name: str) -> int:
    """stdout: the token, then its tokens-file line (so a script can take both); stderr: what to do with them."""
    from service.api import tokens

    token = tokens.mint()
    try:
        line = tokens.file_line(name, token)
    except ConfigurationError as exc:
        print(f"statuscache: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(line)
    print(
        f"statuscache: the first line is {name}'s token, shown only this once: hand it over now. Add the second "
        "line to the file STATUSCACHE_API_TOKENS_FILE names (it holds only the token's SHA-256), then send "
        "each running service SIGHUP to load it.",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in cli.COMMANDS:
        # A client of a running service: no settings, no database, no AWS, none of the service's imports.
        return cli.run(args)
    if args.command == "token":
        # Needs no settings, database, AWS or running service.
        return create_token(args.name)
    # The service's own machinery (uvicorn, SQLAlchemy, botocore) is only loaded for the service's commands.
    from service import runner

    try:
        settings = _settings(args)
    except ConfigurationError as exc:
        print(f"statuscache: {exc}", file=sys.stderr)
        return 2
    runner.configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            return runner.serve(settings)
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
    except REFUSALS as exc:
        if settings.log_level == "DEBUG":
            traceback.print_exception(exc)
        print(f"statuscache: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        return 130
    return 0


# The exit statuses of serve, poll, sync and migrate (the README's operations section lists them).
CONFIGURATION = 2  # the settings, a file or the database's schema: fix something, then start again
# sysexits.h's EX_TEMPFAIL: the database cannot be reached now, starting again later may be enough.
DATABASE_UNREACHABLE = 75
# uvicorn's own STARTUP_FAILURE: the server did not start for another reason, logged above (an address in use).
STARTUP_FAILED = 3


def exit_status(exc: Exception) -> int:
    """The exit status for a start-up refusal. Pure."""
    if isinstance(exc, DatabaseUnavailable):
        return DATABASE_UNREACHABLE
    if isinstance(exc, StartupFailed):
        return STARTUP_FAILED
    return CONFIGURATION


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
