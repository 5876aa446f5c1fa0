"""Which process does a piece of work that only one may do: reconcile a region, deliver a subscription, capture a
region's evidence, run the poller of `serve --workers`. On PostgreSQL a lease is a session advisory lock; every
lease of a `Leases` is held on one connection of its own, so a hundred subscriptions take one connection, not a
hundred. On SQLite it is an flock on a file of its own in the directory beside the database (`<database>-leases/`):
the workers of `serve --workers` (or two `serve`s) sharing one SQLite file are processes as replicas are.

The holder keeps the connection (or the file) open; if it dies, PostgreSQL drops the connection and its locks with
it (the kernel closes the file and its lock), and the next process to ask takes over. If this process's connection
breaks, every lease it held is given up and asked for again. An in-memory SQLite database belongs to one process:
every lease is always held.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import DatabaseUnavailable
from service.store import db

log = logging.getLogger(__name__)


class Leases:
    # How long a held lease is trusted before its connection is checked again.
    CHECK_SECONDS = 5.0

    def __init__(self, engine: AsyncEngine, *, namespace: str, held: set[str] | None = None) -> None:
        """`held`: the set that shows which leases this process holds (a metric); kept true here."""
        self._engine = engine
        self._shared = engine.dialect.name == "postgresql"
        self._files = LockFiles.beside(engine, namespace=namespace)
        self._namespace = namespace
        self._connection: AsyncConnection | None = None
        self._held: set[str] = held if held is not None else set()
        self._checked = 0.0
        # One asker at a time: two parts of this process asking for the same lease at once must not open two
        # sessions, the second of which would find the first one's lock and think another replica holds it.
        self._lock = asyncio.Lock()

    def _key(self, name: str) -> str:
        return f"statuscache/{self._namespace}/{name}"

    async def holds(self, name: str) -> bool:
        """True when this process may act for `name` now (taking the lease if it is free).

        A database outage is DatabaseUnavailable here, as everywhere in the store: the loops asking log it in one line.
        """
        if self._files is not None:
            return self._holds_file(name)
        if not self._shared:
            return True
        async with self._lock, db.translated():
            now = time.monotonic()
            if self._connection is not None and now - self._checked > self.CHECK_SECONDS:
                try:
                    await self._connection.execute(text("SELECT 1"))
                    self._checked = now
                except Exception:
                    log.warning("lost the %s lease connection; asking again for every lease", self._namespace)
                    await self._reset()
            if name in self._held:
                return True
            if self._connection is None:
                self._connection = await self._engine.connect()
                self._checked = now
            try:
                taking = text("SELECT pg_try_advisory_lock(hashtext(:key))")
                acquired = bool((await self._connection.execute(taking, {"key": self._key(name)})).scalar_one())
                # Commit the implicit transaction; the session-level lock outlives it.
                await self._connection.commit()
            except Exception:
                await self._reset()
                raise
            if acquired:
                log.info("this replica now holds the %s lease of %s", self._namespace, name)
                self._held.add(name)
            return acquired

    def _holds_file(self, name: str) -> bool:
        assert self._files is not None
        if name in self._held:
            return True
        if not self._files.take(name):
            return False
        log.info("this process now holds the %s lease of %s", self._namespace, name)
        self._held.add(name)
        return True

    async def release(self, name: str) -> None:
        if self._files is not None:
            self._held.discard(name)
            self._files.give_up(name)
            return
        async with self._lock:
            if name not in self._held or self._connection is None:
                return
            self._held.discard(name)
            try:
                unlock = text("SELECT pg_advisory_unlock(hashtext(:key))")
                await self._connection.execute(unlock, {"key": self._key(name)})
                await self._connection.commit()
            except Exception:
                log.warning("releasing the %s lease of %s failed; closing its connection", self._namespace, name)
                await self._reset()

    async def release_all(self) -> None:
        if self._files is not None:
            self._held.clear()
            self._files.give_up_all()
            return
        async with self._lock:
            await self._reset()

    async def _reset(self) -> None:
        self._held.clear()
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            # A pooled connection outlives close(): its session (and the locks) must not go back to the pool.
            await connection.invalidate()
        except Exception:
            log.debug("closing a lease connection failed", exc_info=True)


# A lease's name as a file name: as it is when it is plain (a region, a host), else its digest.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class LockFiles:
    """SQLite's leases: an exclusive, non-blocking flock on one file per lease, held while the file stays open.

    flock, not fcntl's record locks: an flock belongs to the open file, so two `Leases` of one process (two replicas
    in a test) exclude each other as two processes do, and closing one file never drops another's lock. The files
    are never deleted: deleting one while another process waits to lock it would let two processes hold "it".
    """

    def __init__(self, directory: Path, *, namespace: str) -> None:
        self.directory = directory
        self._namespace = namespace
        self._open: dict[str, int] = {}

    @classmethod
    def beside(cls, engine: AsyncEngine, *, namespace: str) -> LockFiles | None:
        """The lock files of a SQLite file database (None for PostgreSQL and in-memory SQLite)."""
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return cls(Path(f"{Path(database).absolute()}-leases"), namespace=namespace)

    def path(self, name: str) -> Path:
        plain = name if PLAIN_NAME.fullmatch(name) else hashlib.sha256(name.encode()).hexdigest()[:32]
        return self.directory / f"{self._namespace}.{plain}"

    def take(self, name: str) -> bool:
        """Lock `name`'s file if no other open file holds it (never waits); True when this one now holds it."""
        if name in self._open:
            return True
        path = self.path(name)
        try:
            self.directory.mkdir(exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot open the lease file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except OSError as exc:
            os.close(descriptor)
            raise DatabaseUnavailable(f"cannot lock the lease file {path}: {exc.strerror}") from exc
        self._open[name] = descriptor
        return True

    def give_up(self, name: str) -> None:
        descriptor = self._open.pop(name, None)
        if descriptor is not None:
            # Closing the file releases its lock.
            os.close(descriptor)

    def give_up_all(self) -> None:
        for name in list(self._open):
            self.give_up(name)
