"""What every route shares: the settings, and the runtime the lifespan opens (one typed object)."""

from __future__ import annotations

from dataclasses import dataclass

from service.runtime import Runtime
from service.settings import Settings


@dataclass
class AppState:
    settings: Settings
    # Set by the lifespan (or by a test that built its own runtime); None before start-up.
    opened: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if self.opened is None:
            raise RuntimeError("the runtime is not open: the app's lifespan has not started")
        return self.opened
