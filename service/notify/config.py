"""The subscriptions file as the service holds it: read and checked at start (a bad file refuses to start),
re-read on SIGHUP (a bad file then keeps the set in force, logged once). Its I/O: reading the file and the
secret files, and resolving webhook hosts; the rules are service.domain.subscriptions."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from service.domain import subscriptions
from service.domain.subscriptions import Refusal, Subscriptions
from service.errors import ConfigurationError

log = logging.getLogger(__name__)


def resolve(host: str) -> list[str]:
    """The addresses `host` resolves to now; none when it does not resolve (it may later: not a refusal)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return []


def read_secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load(
    path: str, *, served_regions: Iterable[str], resolver: Callable[[str], list[str]] = resolve
) -> Subscriptions:
    """The file's subscriptions, or ConfigurationError in one line naming the file, the entry and the field."""
    source = f"STATUSCACHE_SUBSCRIPTIONS_FILE {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigurationError(f"{source}: cannot read it ({reason})") from None
    try:
        return subscriptions.parse(
            text, source=source, served_regions=served_regions, read_secret=read_secret, resolve=resolver
        )
    except Refusal as exc:
        raise ConfigurationError(str(exc)) from None


class SubscriptionsFile:
    """Loaded at start, re-read on `reload()`; `on_change` callbacks get each new set."""

    def __init__(
        self, path: str, *, served_regions: Iterable[str], resolver: Callable[[str], list[str]] = resolve
    ) -> None:
        self.path = path
        self._regions = tuple(served_regions)
        self._resolver = resolver
        self.current = load(path, served_regions=self._regions, resolver=resolver)
        self._listeners: list[Callable[[Subscriptions], None]] = []
        log.info("subscriptions file %s: %s", path, describe(self.current))

    def on_change(self, listener: Callable[[Subscriptions], None]) -> None:
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Re-read the file; one that cannot be read or is refused keeps the set in force. True if reloaded."""
        try:
            fresh = load(self.path, served_regions=self._regions, resolver=self._resolver)
        except ConfigurationError as exc:
            log.error("subscriptions not reloaded, the %d in force stay: %s", len(self.current), exc)
            return False
        self.current = fresh
        log.info("subscriptions file %s reloaded: %s", self.path, describe(fresh))
        for listener in self._listeners:
            listener(fresh)
        return True


def describe(found: Subscriptions) -> str:
    """For a log line: names and kinds, never a URL's query or a secret."""
    if not len(found):
        return "no subscriptions"
    return ", ".join(f"{item.name} ({item.kind} {item.target})" for item in found)
