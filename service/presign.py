"""Pre-signed configuration URLs: signed once per object per reuse window, never served near expiry."""

from __future__ import annotations

import time
from collections.abc import Callable

from service.aws import Aws
from service.domain.models import ConfigLocation
from service.support.bounded import BoundedDict

SIGNED_MAX_ENTRIES = 50_000


class UrlSigner:
    """Signs GetObject URLs valid for `expires_seconds`, reusing one signature for `reuse_seconds`.

    Every URL handed out has at least expires - reuse seconds of validity left, and the window
    number goes into the ETag so a client revalidating after the window gets the fresh URL.
    """

    def __init__(
        self,
        aws: Aws,
        *,
        expires_seconds: int,
        reuse_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < reuse_seconds < expires_seconds:
            raise ValueError("reuse window must be positive and shorter than the URL lifetime")
        self._aws = aws
        self._expires = expires_seconds
        self._reuse = reuse_seconds
        self._clock = clock
        # (region, bucket, key) -> (window, URL)
        self._signed: BoundedDict[tuple[str, str, str], tuple[int, str]] = BoundedDict(SIGNED_MAX_ENTRIES)

    def window(self) -> int:
        return int(self._clock() // self._reuse)

    async def url(self, *, region: str, config: ConfigLocation) -> tuple[str | None, int]:
        """(signed URL or None when not signable, the window it belongs to)."""
        window = self.window()
        if not config.signable or config.bucket is None or config.key is None:
            return None, window
        key = (region, config.bucket, config.key)
        cached = self._signed.get(key)
        if cached is not None and cached[0] == window:
            return cached[1], window
        url = await self._aws.presign(
            region=region, bucket=config.bucket, key=config.key, expires_seconds=self._expires
        )
        self._signed[key] = (window, url)
        return url, window
