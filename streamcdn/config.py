"""The deployment file: one TOML file describes a whole streamcdn deployment.

Sites (name, client CIDRs v4 and v6, ordered fallback sites), appliances (id, URL, site,
capacity, upstreams, policy, tier sizes), the origin, steering and control addresses,
the signing keys with their key ids, and the admin keys. Every ``streamcdn serve X
--config FILE`` reads its own part; command-line flags override it. A commented example
is ``examples/deployment.toml``; ``streamcdn demo`` writes and uses one.

Every value is checked when the file is read, and a bad one is reported once, naming the
file, the key, the value and what was expected::

    streamcdn: error: deploy.toml: appliances[2].capacity_mbps: expected a number > 0, got 'fast'

Unknown keys are errors too, so a misspelt key is not silently ignored. Relative paths
(the origin's store, an appliance's cache dir) are relative to the file's directory.
"""

from __future__ import annotations

import ipaddress
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from streamcdn.errors import UserError
from streamcdn.ids import is_valid_title_id
from streamcdn.tokens import SigningKey
from streamcdn.units import parse_size

T = TypeVar("T")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_REQUIRED: Any = object()
# Appliance tunables for which 0 means "off" (scrubbing, shedding on the loop's delay,
# hedged upstream requests) rather than "too small".
_ZERO_IS_OFF = ("scrub_bytes_per_s", "limiter_lag_target_s", "upstream_hedge_after_s")
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(UserError):
    """A deployment file that cannot be used: names the file, the key and the value."""


@dataclass(frozen=True)
class Site:
    name: str
    cidrs: tuple[str, ...]  # client networks, IPv4 and IPv6
    fallbacks: tuple[str, ...] = ()  # other sites, in order, when this one cannot serve


@dataclass(frozen=True)
class Appliance:
    id: str
    url: str  # where players and child appliances reach it
    site: str
    capacity_mbps: float
    upstreams: tuple[str, ...]  # URLs, parents first, the origin last
    policy: str | None = None
    mem_bytes: int | None = None
    disk_bytes: int | None = None
    cache_dir: Path | None = None
    open: bool = False  # serve unsigned /titles/... URLs
    chaos: bool = True  # its /admin/chaos may inject failures
    # Sign its heartbeats: the first signs, all verify (rotation); default: the signing keys.
    heartbeat_keys: tuple[SigningKey, ...] = ()
    lock_timeout_s: float | None = None  # a waiter replaces a stuck fill after this
    upstream_head_timeout_s: float | None = None  # an upstream's whole response head
    upstream_hedge_after_s: float | None = None  # ask the next upstream too after this; 0: off
    upstream_min_body_bps: float | None = None  # an upstream body slower than this fails
    scrub_bytes_per_s: float | None = None  # background re-hash of disk objects; 0: off
    limiter_initial: int | None = None  # requests in flight before the limiter has measured
    limiter_max: int | None = None  # the most requests in flight the limiter ever allows
    limiter_lag_target_s: float | None = None  # shed while the loop runs this late; 0: off

    @property
    def port(self) -> int:
        return port_of(self.url)


@dataclass(frozen=True)
class Deployment:
    path: Path
    origin_url: str
    origin_store: Path | None
    steering_url: str | None
    control_url: str | None
    control_db: Path | None  # control's own SQLite file (accounts, catalog, play sessions)
    control_events_file: Path | None  # playback events as JSONL, when no Redis
    control_redis_url: str | None  # playback events to a Redis Stream
    trusted_proxies: tuple[str, ...]  # X-Forwarded-For is believed only from these
    play_ttl_s: float  # how long a play session and its signed URLs last
    default_site: str
    load_bound: float  # share of capacity above which steering passes an appliance over
    heartbeat_interval_s: float
    down_after_missed: int  # heartbeats missed before an appliance counts as down
    redis_url: str | None
    signing_keys: tuple[SigningKey, ...]  # the first signs; all verify (rotation)
    admin_keys: tuple[str, ...]  # each opens the appliances' /admin (rotation); tools use the first
    sites: tuple[Site, ...]
    appliances: tuple[Appliance, ...]

    def appliance(self, appliance_id: str) -> Appliance:
        for a in self.appliances:
            if a.id == appliance_id:
                return a
        known = ", ".join(a.id for a in self.appliances) or "none"
        raise ConfigError(f"{self.path}: no appliance {appliance_id!r} (known: {known})")

    @property
    def admin_key(self) -> str | None:
        """The admin key tools use; the others are still accepted while it rotates."""
        return self.admin_keys[0] if self.admin_keys else None

    def heartbeat_keys(self, appliance_id: str) -> tuple[SigningKey, ...]:
        """The keys steering accepts an appliance's heartbeats by: its own heartbeat keys,
        else every signing key, so either kind rotates without a refused heartbeat."""
        return self.appliance(appliance_id).heartbeat_keys or self.signing_keys

    def heartbeat_key(self, appliance_id: str) -> SigningKey | None:
        """The key an appliance signs its heartbeats with: the first of heartbeat_keys."""
        keys = self.heartbeat_keys(appliance_id)
        return keys[0] if keys else None


def load(path: Path) -> Deployment:
    """Read and check a deployment file; ConfigError (one line) on any problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a deployment file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Deployment:
    """A Deployment from the TOML document ``data`` read from ``path``."""
    base = path.resolve().parent
    top = _Table(data, "", path)

    keys = top.table("keys")
    signing = keys.signing_keys(
        "signing", keys.strings("signing", "a list of 'KEYID:SECRET' strings", [])
    )
    admin_keys = tuple(keys.one_or_many("admin", "a key, or a list of keys during rotation"))
    for admin_key in admin_keys:
        if len(admin_key) < 16:
            keys.fail("admin", admin_key, "a key of at least 16 characters")
    keys.done()

    origin = top.table("origin")
    origin_url = origin.url("url")
    store = origin.get("store", str, "a directory path", None)
    origin.done()

    steering = top.table("steering")
    steering_url = steering.url("url", None)
    default_site = steering.get("default_site", str, "a site name", None)
    load_bound = steering.number("load_bound", 0.8, low=0.0, high=1.0)
    interval = steering.number("heartbeat_interval_s", 1.0, low=0.0, high=60.0)
    missed = steering.get("down_after_missed", int, "a whole number", 3)
    if not 1 <= missed <= 100:
        steering.fail("down_after_missed", missed, "a whole number from 1 to 100")
    redis_url = steering.get("redis", str, "a redis:// URL", None)
    if redis_url is not None and not redis_url.startswith(_REDIS_SCHEMES):
        steering.fail("redis", redis_url, "a redis://, rediss:// or unix:// URL")
    steering.done()

    control = top.table("control")
    control_url = control.url("url", None)
    control_db = control.get("db", str, "a file path", None)
    control_events = control.get("events_file", str, "a file path", None)
    control_redis = control.get("redis", str, "a redis:// URL", None)
    if control_redis is not None and not control_redis.startswith(_REDIS_SCHEMES):
        control.fail("redis", control_redis, "a redis://, rediss:// or unix:// URL")
    proxies = tuple(
        control.convert("trusted_proxies", c, _cidr)
        for c in control.strings("trusted_proxies", "a list of CIDRs", [])
    )
    play_ttl = control.number("play_ttl_s", 6 * 3600.0, low=0.0, high=7 * 86400.0)
    control.done()

    sites: list[Site] = []
    for t in top.tables("sites"):
        name = t.get("name", str, "a site name")
        if not is_valid_title_id(name):
            t.fail("name", name, "letters, digits, '.', '_' and '-'")
        cidrs = tuple(t.convert("cidrs", c, _cidr) for c in t.strings("cidrs", "CIDRs", []))
        fallbacks = tuple(t.strings("fallbacks", "a list of site names", []))
        t.done()
        sites.append(Site(name, cidrs, fallbacks))
    names = [s.name for s in sites]
    site_set = set(names)
    for i, s in enumerate(sites):
        where = _Table({}, f"sites[{i}]", path)
        if names.count(s.name) > 1:
            where.fail("name", s.name, "a name no other site has")
        for f in s.fallbacks:
            if f not in site_set or f == s.name:
                where.fail("fallbacks", f, f"another site's name (sites: {', '.join(names)})")
    if default_site is None:
        default_site = names[0] if names else ""
    elif default_site not in site_set:
        top.table("steering").fail("default_site", default_site, f"one of {names}")

    raw_appliances = top.tables("appliances")
    appliance_ids = [t.peek("id") for t in raw_appliances]
    appliance_urls: dict[str, str] = {}
    for t in raw_appliances:
        if isinstance(t.peek("id"), str) and isinstance(t.peek("url"), str):
            appliance_urls[t.peek("id")] = t.peek("url")
    appliances: list[Appliance] = []
    for t in raw_appliances:
        aid = t.get("id", str, "an appliance id")
        if not is_valid_title_id(aid):
            t.fail("id", aid, "letters, digits, '.', '_' and '-'")
        if appliance_ids.count(aid) > 1:
            t.fail("id", aid, "an id no other appliance has")
        url = t.url("url")
        site = t.get("site", str, "a site name")
        if site not in site_set:
            t.fail("site", site, f"one of the sites {names}")
        capacity = t.number("capacity_mbps", _REQUIRED, low=0.0, high=1e7)
        upstreams = []
        for up in t.strings("upstreams", "a list of appliance ids, 'origin' or URLs", []):
            if up == "origin":
                upstreams.append(origin_url)
            elif up in appliance_urls and up != aid:
                upstreams.append(appliance_urls[up])
            elif up.startswith(("http://", "https://")):
                upstreams.append(t.convert("upstreams", up, _url))
            else:
                t.fail("upstreams", up, "'origin', another appliance's id or an http(s) URL")
        if not upstreams:
            upstreams.append(origin_url)
        policy = t.get("policy", str, "a policy name", None)
        mem = t.convert("mem", t.get("mem", str, "a size like '256MB'", None), _size)
        disk = t.convert("disk", t.get("disk", str, "a size like '20GB'", None), _size)
        cache_dir = t.get("cache_dir", str, "a directory path", None)
        is_open = t.get("open", bool, "true or false", False)
        chaos = t.get("chaos", bool, "true or false", True)
        hb = t.one_or_many("heartbeat_key", "'KEYID:SECRET', or a list of them during rotation")
        heartbeat_keys = t.signing_keys("heartbeat_key", hb)
        tunables = {}
        for name, high in (
            ("lock_timeout_s", 3600.0),
            ("upstream_head_timeout_s", 3600.0),
            ("upstream_hedge_after_s", 3600.0),
            ("upstream_min_body_bps", 1e12),
            ("scrub_bytes_per_s", 1e12),
            ("limiter_lag_target_s", 10.0),
        ):
            if name in t.data:
                off = name in _ZERO_IS_OFF
                tunables[name] = t.number(name, _REQUIRED, low=0.0, high=high, zero_is_off=off)
        limits: dict[str, int] = {}
        for name in ("limiter_initial", "limiter_max"):
            if name in t.data:
                limits[name] = t.get(name, int, "a whole number of requests >= 1")
                if limits[name] < 1:
                    t.fail(name, limits[name], "a whole number of requests >= 1")
        t.done()
        appliances.append(
            Appliance(
                id=aid,
                url=url,
                site=site,
                capacity_mbps=capacity,
                upstreams=tuple(upstreams),
                policy=policy,
                mem_bytes=mem,
                disk_bytes=disk,
                cache_dir=base / cache_dir if cache_dir else None,
                open=is_open,
                chaos=chaos,
                heartbeat_keys=heartbeat_keys,
                limiter_initial=limits.get("limiter_initial"),
                limiter_max=limits.get("limiter_max"),
                **tunables,
            )
        )
    top.done()
    return Deployment(
        path=path,
        origin_url=origin_url,
        origin_store=base / store if store else None,
        steering_url=steering_url,
        control_url=control_url,
        control_db=base / control_db if control_db else None,
        control_events_file=base / control_events if control_events else None,
        control_redis_url=control_redis,
        trusted_proxies=proxies,
        play_ttl_s=play_ttl,
        default_site=default_site,
        load_bound=load_bound,
        heartbeat_interval_s=interval,
        down_after_missed=missed,
        redis_url=redis_url,
        signing_keys=signing,
        admin_keys=admin_keys,
        sites=tuple(sites),
        appliances=tuple(appliances),
    )


# -- reading one table ------------------------------------------------------------------


class _Table:
    """One TOML table, read key by key; ``done()`` rejects the keys nobody read."""

    def __init__(self, data: object, where: str, path: Path) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: {where}: expected a table, got {data!r:.80}")
        self.data: dict[str, Any] = data
        self.read: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, value: object, expected: str) -> Any:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ConfigError(f"{self.path}: {self._name(key)}: expected {expected}, got {shown}")

    def peek(self, key: str) -> Any:
        return self.data.get(key)

    def get(self, key: str, kind: type[T], expected: str, default: T | None = _REQUIRED) -> T:
        self.read.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.path}: {self._name(key)}: missing ({expected})")
            return default  # type: ignore[return-value]
        value = self.data[key]
        # bool is an int in Python; a count or a size must not be `true`.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(key, value, expected)
        return value  # type: ignore[no-any-return]

    def number(
        self, key: str, default: float, *, low: float, high: float, zero_is_off: bool = False
    ) -> float:
        """A number in (low, high]; with ``zero_is_off``, 0 too (the feature off)."""
        self.read.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.path}: {self._name(key)}: missing (a number)")
            return default
        value = self.data[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and zero_is_off and value == 0:
            return 0.0
        if not ok or not low < value <= high:
            off = " (or 0: off)" if zero_is_off else ""
            self.fail(key, value, f"a number > {low:g} and <= {high:g}{off}")
        return float(value)

    def url(self, key: str, default: str | None = _REQUIRED) -> str:
        value = self.get(key, str, "an http(s) URL", default)
        return value if value is None else self.convert(key, value, _url)

    def strings(self, key: str, expected: str, default: Any = _REQUIRED) -> list[str]:
        value = self.get(key, list, expected, default)
        for item in value:
            if not isinstance(item, str):
                self.fail(key, item, expected)
        return value

    def one_or_many(self, key: str, expected: str) -> list[str]:
        """A string or a list of strings (keys being rotated), as a list; [] if absent."""
        if isinstance(self.peek(key), str):
            return [self.get(key, str, expected)]
        return self.strings(key, expected, [])

    def signing_keys(self, key: str, values: list[str]) -> tuple[SigningKey, ...]:
        """``'KEYID:SECRET'`` strings as keys whose ids differ."""
        parsed = tuple(self.convert(key, v, _signing_key) for v in values)
        ids = [k.key_id for k in parsed]
        if len(set(ids)) != len(ids):
            self.fail(key, ids, "key ids that differ")
        return parsed

    def convert(self, key: str, value: Any, fn: Callable[[Any], T]) -> T:
        if value is None:
            return None  # type: ignore[return-value]
        try:
            return fn(value)
        except ValueError as exc:
            return self.fail(key, value, str(exc))  # type: ignore[no-any-return]

    def table(self, key: str) -> _Table:
        self.read.add(key)
        return _Table(self.data.get(key, {}), self._name(key), self.path)

    def tables(self, key: str) -> list[_Table]:
        self.read.add(key)
        items = self.data.get(key, [])
        if not isinstance(items, list):
            self.fail(key, items, f"[[{key}]] tables")
        return [_Table(item, f"{key}[{i}]", self.path) for i, item in enumerate(items)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            known = ", ".join(sorted(self.read))
            name = self._name(unknown[0])  # a quoted TOML key may hold a newline
            shown = name if name.isprintable() else repr(name)
            raise ConfigError(f"{self.path}: {shown}: unknown key (known here: {known})")


def _url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("an http(s) URL with a valid port") from None
    if parts.query or parts.fragment:
        raise ValueError("a URL without query or fragment")
    return value.rstrip("/")


def port_of(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"an IPv4 or IPv6 network like 10.0.0.0/8 ({exc})") from None


def _size(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError("a size like '256MB' or '20GB'") from None


def _signing_key(value: str) -> SigningKey:
    try:
        key = SigningKey.parse(value)
    except ValueError as exc:
        raise ValueError(f"'KEYID:SECRET' ({exc})") from None
    if ":" not in value:
        raise ValueError("'KEYID:SECRET' with an explicit key id")
    return key
