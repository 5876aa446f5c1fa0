"""Build derivation: builds follow the transitions (service.store.builds), soon after this process writes some
and every second for other replicas' writes."""

from __future__ import annotations

from service.errors import DatabaseUnavailable
from service.metrics import Metrics
from service.store.cache import Cache
from service.support.loops import Backoff, Loop
from service.support.signal import ChangeSignal

# Builds are derived this long after this process writes transitions (gathering a burst into one pass),
# and looked for at least this often otherwise (other replicas' writes).
BUILDS_GATHER_SECONDS = 0.2
BUILDS_POLL_SECONDS = 1.0
# While the database cannot be reached (or a pass fails otherwise), derivation asks again this often.
BUILDS_OUTAGE_RETRY_SECONDS = 2.0


class BuildDerivation:
    def __init__(self, *, cache: Cache, metrics: Metrics, transitioned: ChangeSignal) -> None:
        self._cache = cache
        self._metrics = metrics
        # Notified when this process writes transitions.
        self._transitioned = transitioned

    async def derive(self) -> float:
        """Derive the builds of every image whose transitions changed; the seconds until the next look."""
        self._metrics.builds_derived += await self._cache.derive_builds()
        return BUILDS_POLL_SECONDS

    def loop(self) -> Loop:
        return Loop(
            name="build derivation",
            step=self.derive,
            backoff=Backoff(BUILDS_OUTAGE_RETRY_SECONDS, BUILDS_OUTAGE_RETRY_SECONDS),
            # An outage is not a fault of this code: one line, as the consumer and the rechecker say it.
            quiet=(DatabaseUnavailable,),
            wake=self._transitioned.wait,
            settle_seconds=BUILDS_GATHER_SECONDS,
        )
