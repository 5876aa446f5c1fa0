"""Pure: the subscriptions file (STATUSCACHE_SUBSCRIPTIONS_FILE) read and checked, and which changes each
subscription is sent.

The file is TOML: arrays of tables `[[webhook]]`, `[[sns]]` and `[[ssm_parameter]]`, each with a `name`
unique across the file, its sink (`url` and `secret_file`, `topic_arn`, `parameter`) and optional filters
(`statuses`, `image_ids` as glob patterns, `regions`). A bad file is refused whole, in one line naming the
file, the entry and the field (`Refusal`); nothing of it applies. Reading the secret files and resolving
webhook hosts is the loader's I/O (service.notify.config); what they must satisfy is decided here.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from service.domain.models import REGION_PATTERN

KINDS = ("webhook", "sns", "ssm_parameter")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# What `statuses` may name: pcluster's imageBuildStatus values, and GONE for an image that no longer exists.
GONE = "GONE"
STATUSES = frozenset({
    "BUILD_IN_PROGRESS", "BUILD_FAILED", "BUILD_COMPLETE", "DELETE_IN_PROGRESS", "DELETE_FAILED", "DELETE_COMPLETE",
    GONE,
})  # fmt: skip
COMPLETE = "BUILD_COMPLETE"
TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-\d:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")
# SSM's rules: letters, digits and _.-/ ; a path starts with / and has at most 15 levels; aws and ssm are AWS's.
PARAMETER = re.compile(r"(/[A-Za-z0-9_.-]+){1,15}|[A-Za-z0-9_.-]+")
RESERVED_PARAMETER = re.compile(r"/?(aws|ssm)", re.IGNORECASE)
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
# Instance metadata and link-local: a webhook must never make this service fetch its own credentials.
FORBIDDEN_NETWORKS = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
FORBIDDEN_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254")})

_COMMON = {"name", "statuses", "image_ids", "regions"}
KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required keys, every key allowed)
    "webhook": (frozenset({"name", "url", "secret_file"}), frozenset(_COMMON | {"url", "secret_file"})),
    "sns": (frozenset({"name", "topic_arn"}), frozenset(_COMMON | {"topic_arn"})),
    # An SSM parameter follows BUILD_COMPLETE only: it has no `statuses`.
    "ssm_parameter": (frozenset({"name", "parameter"}), frozenset({"name", "parameter", "image_ids", "regions"})),
}


class Refusal(Exception):
    """The file cannot be applied: one line naming the file, the entry and the field. Never quotes a secret."""


@dataclass(frozen=True)
class Filters:
    """Which transitions a subscription is sent; None: every one."""

    statuses: frozenset[str] | None = None
    image_ids: tuple[str, ...] | None = None
    regions: frozenset[str] | None = None

    def matches(self, *, region: str, image_id: str, status: str, previous: str | None) -> bool:
        """Whether a transition of `image_id` in `region` to `status` (GONE for an image gone), from `previous`
        (None: the first the cache has of the image), is one to send.

        With `statuses`, the build status must have changed to a listed one: an AMI's or a stack's status
        moving under a BUILD_COMPLETE image is not another BUILD_COMPLETE.
        """
        if self.regions is not None and region not in self.regions:
            return False
        if self.image_ids is not None and not any(fnmatch.fnmatchcase(image_id, glob) for glob in self.image_ids):
            return False
        if self.statuses is not None:
            return status in self.statuses and status != previous
        return True


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    secret_file: str
    filters: Filters
    # The signing key, decoded from the secret file; never shown (repr, logs, /stats, the API).
    secret: bytes = field(default=b"", repr=False, compare=False)
    kind: str = "webhook"

    @property
    def target(self) -> str:
        # The URL without its query: a token in a query string is a secret too.
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


@dataclass(frozen=True)
class Sns:
    name: str
    topic_arn: str
    filters: Filters
    kind: str = "sns"

    @property
    def target(self) -> str:
        return self.topic_arn


@dataclass(frozen=True)
class SsmParameter:
    name: str
    parameter: str
    filters: Filters
    kind: str = "ssm_parameter"

    @property
    def target(self) -> str:
        return self.parameter


Subscription = Webhook | Sns | SsmParameter


@dataclass(frozen=True)
class Subscriptions:
    """One version of the file: the subscriptions by name, in the file's order."""

    source: str
    by_name: Mapping[str, Subscription]

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


EMPTY = Subscriptions(source="", by_name={})


def is_forbidden_address(address: str) -> bool:
    """Whether a webhook may not be sent to `address` (link-local, instance metadata)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in FORBIDDEN_ADDRESSES or any(ip in network for network in FORBIDDEN_NETWORKS)


def secret_key(text: str) -> bytes | None:
    """The key a secret file's `whsec_<base64>` holds, or None when it is not one of at least 24 bytes."""
    value = text.strip()
    if not value.startswith(SECRET_PREFIX):
        return None
    encoded = value[len(SECRET_PREFIX) :]
    try:
        # Padding optional, as Standard Webhooks' own libraries read it.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= MIN_SECRET_BYTES else None


def parse(
    text: str,
    *,
    source: str,
    served_regions: Iterable[str],
    read_secret: Callable[[str], str],
    resolve: Callable[[str], list[str]],
) -> Subscriptions:
    """The subscriptions of a file's text, or Refusal. `read_secret(path)` gives a secret file's text (OSError
    if it cannot), `resolve(host)` the addresses a webhook host resolves to (empty when it does not)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Refusal(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - set(KINDS))
    if unknown:
        raise Refusal(f"{source}: unknown table {unknown[0]!r} (expected [[webhook]], [[sns]] or [[ssm_parameter]])")
    served = frozenset(served_regions)
    by_name: dict[str, Subscription] = {}
    for kind in KINDS:
        entries = document.get(kind, [])
        if not isinstance(entries, list):
            raise Refusal(f"{source}: {kind} must be an array of tables ([[{kind}]])")
        for number, entry in enumerate(entries, start=1):
            where = _Where(source, kind, number, entry.get("name") if isinstance(entry, dict) else None)
            subscription = _entry(entry, kind, where, served=served, read_secret=read_secret, resolve=resolve)
            if subscription.name in by_name:
                raise where.refuse("name", "another subscription in the file has this name")
            by_name[subscription.name] = subscription
    return Subscriptions(source=source, by_name=by_name)


@dataclass(frozen=True)
class _Where:
    source: str
    kind: str
    number: int
    name: object

    def refuse(self, key: str, problem: str) -> Refusal:
        named = f" ({self.name!r})" if isinstance(self.name, str) and NAME_PATTERN.fullmatch(self.name) else ""
        return Refusal(f"{self.source}: [[{self.kind}]] #{self.number}{named}, {key}: {problem}")


def _entry(
    entry: object,
    kind: str,
    where: _Where,
    *,
    served: frozenset[str],
    read_secret: Callable[[str], str],
    resolve: Callable[[str], list[str]],
) -> Subscription:
    if not isinstance(entry, dict):
        raise where.refuse("(entry)", "expected a table")
    required, allowed = KEYS[kind]
    for key in sorted(entry):
        if key not in allowed:
            raise where.refuse(key, f"unknown key (a {kind} takes {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in entry:
            raise where.refuse(key, "missing")
    name = _text(entry, "name", where)
    if not NAME_PATTERN.fullmatch(name):
        raise where.refuse("name", "1 to 64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    filters = Filters(
        statuses=_statuses(entry, where), image_ids=_globs(entry, where), regions=_regions(entry, where, served)
    )
    if kind == "webhook":
        url = _url(_text(entry, "url", where), where, resolve)
        path = _text(entry, "secret_file", where)
        try:
            secret_text = read_secret(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise where.refuse("secret_file", f"cannot read {path} ({reason})") from None
        key = secret_key(secret_text)
        if key is None:
            raise where.refuse(
                "secret_file", f"{path} must hold whsec_ and the base64 of at least {MIN_SECRET_BYTES} random bytes"
            )
        return Webhook(name=name, url=url, secret_file=path, filters=filters, secret=key)
    if kind == "sns":
        arn = _text(entry, "topic_arn", where)
        if not TOPIC_ARN.fullmatch(arn):
            raise where.refuse("topic_arn", "not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:TOPIC)")
        return Sns(name=name, topic_arn=arn, filters=filters)
    parameter = _text(entry, "parameter", where)
    if not PARAMETER.fullmatch(parameter) or len(parameter) > 1011:
        raise where.refuse("parameter", "not an SSM parameter name (letters, digits, _.-/; a path starts with /)")
    if RESERVED_PARAMETER.match(parameter):
        raise where.refuse("parameter", "names beginning with aws or ssm are reserved by AWS")
    only_complete = Filters(frozenset({COMPLETE}), filters.image_ids, filters.regions)
    return SsmParameter(name=name, parameter=parameter, filters=only_complete)


def _text(entry: dict[str, Any], key: str, where: _Where) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value:
        raise where.refuse(key, "expected a non-empty string")
    return value


def _list(entry: dict[str, Any], key: str, where: _Where) -> list[str] | None:
    if key not in entry:
        return None
    value = entry[key]
    if not isinstance(value, list) or not value or not all(isinstance(item, str) and item for item in value):
        raise where.refuse(key, "expected a non-empty array of strings")
    return value


def _statuses(entry: dict[str, Any], where: _Where) -> frozenset[str] | None:
    values = _list(entry, "statuses", where)
    if values is None:
        return None
    for value in values:
        if value not in STATUSES:
            raise where.refuse("statuses", f"{value!r} is not an imageBuildStatus ({', '.join(sorted(STATUSES))})")
    return frozenset(values)


def _globs(entry: dict[str, Any], where: _Where) -> tuple[str, ...] | None:
    values = _list(entry, "image_ids", where)
    if values is None:
        return None
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9*?\[\]!-]+", value):
            raise where.refuse("image_ids", f"{value!r} is not a glob pattern of image ids")
    return tuple(values)


def _regions(entry: dict[str, Any], where: _Where, served: frozenset[str]) -> frozenset[str] | None:
    values = _list(entry, "regions", where)
    if values is None:
        return None
    for value in values:
        if not REGION_PATTERN.fullmatch(value) or value not in served:
            serving = ", ".join(sorted(served))
            raise where.refuse("regions", f"{value!r} is not a region this service serves ({serving})")
    return frozenset(values)


def _url(url: str, where: _Where, resolve: Callable[[str], list[str]]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise where.refuse("url", "expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise where.refuse("url", "credentials in the URL would be shown wherever the URL is: use the secret")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise where.refuse("url", "the port is not a number from 0 to 65535") from None
    host = parts.hostname
    if is_forbidden_address(host) or any(is_forbidden_address(address) for address in resolve(host)):
        raise where.refuse("url", f"{host} is a link-local or instance-metadata address")
    return url


# --- what is news ---------------------------------------------------------------------------------------


def is_news(*, previous_exists: bool, created: datetime | None, subscribed_at: datetime) -> bool:
    """Whether a transition is a change to tell, not the cache learning what already was.

    An image's first transition in the cache (no earlier one) is news only when the image was created after the
    subscription began: deploying the service or adding a subscription fills the cache with images that existed
    before, which is not news, while a build that began and ended between two reconciliation passes still is.
    """
    if previous_exists:
        return True
    return created is not None and created >= subscribed_at
