"""What the history routes share: the retention horizon, named in every answer."""

from __future__ import annotations

from datetime import UTC, datetime

from service.api.history_routes import horizon_fields, horizon_headers


def test_the_horizon_is_named_and_a_question_past_it_flagged() -> None:
    oldest = datetime(2025, 12, 1, 9, 30, tzinfo=UTC)
    assert horizon_headers(oldest, past=False) == {"X-History-Horizon": "2025-12-01T09:30:00.000Z"}
    assert horizon_headers(oldest, past=True)["X-History-Past-Horizon"] == "true"
    assert horizon_fields(oldest, past=True) == {"horizon": "2025-12-01T09:30:00.000Z", "pastHorizon": True}
    assert horizon_fields(oldest, past=False) == {"horizon": "2025-12-01T09:30:00.000Z"}
