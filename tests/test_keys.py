"""Deployment secrets in the database: made once, the same for every replica and after a restart."""

from __future__ import annotations

import pytest

from service.settings import Settings
from service.store import db
from service.store.keys import KEY_BYTES, Keys

pytestmark = pytest.mark.asyncio


async def test_every_replica_gets_the_same_key_and_names_get_different_ones(database_url: str) -> None:
    first_engine = db.create_engine(Settings(database_url=database_url))
    second_engine = db.create_engine(Settings(database_url=database_url))
    try:
        first, second = Keys(first_engine), Keys(second_engine)
        page = await first.get("page-tokens")
        assert len(page) == KEY_BYTES
        assert await second.get("page-tokens") == page
        assert await first.get("page-tokens") == page
        assert await second.get("sessions") not in (page, b"")
        # A restarted process (a new Keys) reads the same key back.
        assert await Keys(first_engine).get("sessions") == await first.get("sessions")
    finally:
        await first_engine.dispose()
        await second_engine.dispose()
