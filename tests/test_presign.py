"""Pre-signed configuration URLs: one signature per object per reuse window, never near its expiry."""

from __future__ import annotations

import pytest

from service.domain.models import ConfigLocation
from service.presign import UrlSigner

EXPIRES = 3600
REUSE = 600
CONFIG = ConfigLocation(bucket="bucket", key="dir/configs/image-config.yaml", available=True)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StubAws:
    """Stands in for Aws: signing is counted, and each URL names its signing time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str, str, int]] = []

    async def presign(self, *, region: str, bucket: str, key: str, expires_seconds: int) -> str:
        self.calls.append((region, bucket, key, expires_seconds))
        return f"https://{bucket}.s3.{region}.example/{key}?signed-at={self.clock.now}&n={len(self.calls)}"


def make_signer(clock: Clock, *, expires: int = EXPIRES, reuse: int = REUSE) -> tuple[UrlSigner, StubAws]:
    aws = StubAws(clock)
    signer = UrlSigner(aws, expires_seconds=expires, reuse_seconds=reuse, clock=clock)  # type: ignore[arg-type]
    return signer, aws


@pytest.mark.asyncio
@pytest.mark.parametrize("later", [0.0, 1.0, 299.5, 599.0])
async def test_one_signature_per_object_per_window(later: float) -> None:
    clock = Clock(600.0 * 2000)  # the start of a window
    signer, aws = make_signer(clock)

    first, first_window = await signer.url(region="us-east-1", config=CONFIG)
    clock.now += later
    second, second_window = await signer.url(region="us-east-1", config=CONFIG)

    assert first is not None
    assert second == first
    assert second_window == first_window == 2000
    assert aws.calls == [("us-east-1", "bucket", "dir/configs/image-config.yaml", EXPIRES)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("region", "config"),
    [
        pytest.param("eu-west-1", CONFIG, id="other-region"),
        pytest.param("us-east-1", ConfigLocation("other-bucket", CONFIG.key, available=True), id="other-bucket"),
        pytest.param("us-east-1", ConfigLocation(CONFIG.bucket, "other/key.yaml", available=True), id="other-key"),
    ],
)
async def test_each_region_bucket_and_key_gets_its_own_signature(region: str, config: ConfigLocation) -> None:
    clock = Clock()
    signer, aws = make_signer(clock)

    first, _ = await signer.url(region="us-east-1", config=CONFIG)
    other, _ = await signer.url(region=region, config=config)
    again, _ = await signer.url(region="us-east-1", config=CONFIG)
    other_again, _ = await signer.url(region=region, config=config)

    assert other != first
    assert again == first
    assert other_again == other
    assert [call[:3] for call in aws.calls] == [
        ("us-east-1", CONFIG.bucket, CONFIG.key),
        (region, config.bucket, config.key),
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("start", "later", "windows"),
    [
        pytest.param(1_200_000.0, 600.0, (2000, 2001), id="exactly-one-window"),
        pytest.param(1_200_599.0, 1.0, (2000, 2001), id="just-across-the-boundary"),
        pytest.param(1_200_000.0, 86_400.0, (2000, 2144), id="a-day-later"),
    ],
)
async def test_a_new_signature_when_the_window_moves(start: float, later: float, windows: tuple[int, int]) -> None:
    clock = Clock(start)
    signer, aws = make_signer(clock)

    first, first_window = await signer.url(region="us-east-1", config=CONFIG)
    clock.now += later
    second, second_window = await signer.url(region="us-east-1", config=CONFIG)
    third, third_window = await signer.url(region="us-east-1", config=CONFIG)

    assert (first_window, second_window) == windows
    assert second != first
    assert (third, third_window) == (second, second_window)
    assert len(aws.calls) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "config",
    [
        pytest.param(ConfigLocation(), id="unknown"),
        pytest.param(ConfigLocation(CONFIG.bucket, CONFIG.key, available=False), id="bucket-unreachable"),
        pytest.param(ConfigLocation(None, CONFIG.key, available=True), id="no-bucket"),
        pytest.param(ConfigLocation(CONFIG.bucket, None, available=True), id="no-key"),
    ],
)
async def test_non_signable_config_gives_none_without_signing(config: ConfigLocation) -> None:
    clock = Clock(1_200_000.0)
    signer, aws = make_signer(clock)

    assert await signer.url(region="us-east-1", config=config) == (None, 2000)
    assert aws.calls == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("expires", "reuse"), [(3600, 600), (900, 300), (60, 59)])
async def test_every_url_served_has_at_least_expires_minus_reuse_left(expires: int, reuse: int) -> None:
    clock = Clock(10_000.0)
    signer, _ = make_signer(clock, expires=expires, reuse=reuse)

    for _ in range(200):
        url, _window = await signer.url(region="us-east-1", config=CONFIG)
        assert url is not None
        signed_at = float(url.split("signed-at=")[1].split("&")[0])
        assert signed_at + expires - clock.now >= expires - reuse
        clock.now += reuse / 7


@pytest.mark.parametrize(("expires", "reuse"), [(600, 600), (600, 601), (60, 3600)])
def test_reuse_window_not_shorter_than_lifetime_is_refused(expires: int, reuse: int) -> None:
    with pytest.raises(ValueError, match="reuse"):
        make_signer(Clock(), expires=expires, reuse=reuse)
