"""What the history routes (an image's history, the fleet's transitions, builds) share: what each is built from,
and the retention horizon they answer from.

They take only their own query parameters (service.api.query: `Query.only`), page by signed tokens
(service.api.pages), and gzip their pages when the client accepts it (service.api.compression).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service.api.compression import Compressor
from service.api.pages import PageTokens
from service.api.state import AppState
from service.domain.describe import iso_time
from service.settings import Settings
from service.support.clock import utcnow

HORIZON_HEADER = "X-History-Horizon"
PAST_HORIZON_HEADER = "X-History-Past-Horizon"


class HistoryRoute:
    """A history route's endpoints share the app's state, the page tokens and one compressor."""

    def __init__(self, state: AppState, tokens: PageTokens) -> None:
        self.state = state
        self.tokens = tokens
        # A page of 100 rows is tens of KB of JSON: gzipped when the client accepts it.
        self.compressor = Compressor()


def horizon(settings: Settings) -> datetime:
    """The oldest moment history is kept for (STATUSCACHE_HISTORY_DAYS ago): before it, answers have less."""
    return utcnow() - timedelta(days=settings.history_days)


def horizon_headers(oldest: datetime, *, past: bool) -> dict[str, str]:
    """Every history answer names the horizon; one whose question reached past it says so."""
    headers = {HORIZON_HEADER: iso_time(oldest)}
    if past:
        headers[PAST_HORIZON_HEADER] = "true"
    return headers


def horizon_fields(oldest: datetime, *, past: bool) -> dict[str, object]:
    fields: dict[str, object] = {"horizon": iso_time(oldest)}
    if past:
        fields["pastHorizon"] = True
    return fields
