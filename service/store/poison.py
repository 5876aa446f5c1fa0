"""Messages that could not be read (poison_messages): kept with the reason, so none is lost and none loops forever."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from service.store.tables import poison_messages


@dataclass(frozen=True)
class Poison:
    """An SQS message that could not be read, kept with the reason."""

    queue_url: str
    message_id: str
    body: str
    reason: str


def keep(connection: Connection, items: Sequence[Poison], *, now: datetime) -> None:
    """Store `items`, inside the transaction of the batch they came with."""
    if items:
        connection.execute(
            poison_messages.insert(),
            [
                {
                    "queue_url": item.queue_url,
                    "message_id": item.message_id,
                    "body": item.body,
                    "reason": item.reason,
                    "received_at": now,
                }
                for item in items
            ],
        )
