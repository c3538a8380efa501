"""Every setting of an appliance, with units in the names, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from appliance.policies import DEFAULT_POLICY, POLICIES
from streamcdn.errors import UserError
from streamcdn.ids import is_valid_title_id
from streamcdn.tokens import SigningKey, key_ring

APPLIANCE_PORT = 8100


@dataclass(frozen=True)
class ApplianceConfig:
    id: str
    cache_dir: Path
    upstreams: tuple[str, ...]
    mem_bytes: int = 256 * 10**6
    disk_bytes: int = 20 * 10**9
    host: str = "127.0.0.1"
    port: int = APPLIANCE_PORT
    site: str = "default"
    policy: str = DEFAULT_POLICY
    keys: tuple[SigningKey, ...] = ()
    heartbeat_key: SigningKey | None = None  # signs heartbeats; default: the first key
    capacity_mbps: float | None = None  # reported in heartbeats, when configured
    heartbeat_interval_s: float = 1.0  # steering counts an appliance down after 3 missed
    admin_key: str | None = None
    previous_admin_keys: tuple[str, ...] = ()  # still accepted while the admin key rotates
    open: bool = False  # serve unsigned /titles/... too
    chaos: bool = True  # /admin/chaos may inject failures (false: it answers 403)
    steering: str | None = None
    url: str | None = None  # public URL, if not http://host:port
    # A waiter that has no headers from a fill after this replaces it with a fresh fill.
    # Below the player's 5 s first-byte timeout, above upstream_head_timeout_s (so a fill
    # whose first upstream hangs moves on to the next before anyone gives up on it).
    lock_timeout_s: float = 2.5
    background_fills: int = 2  # upstream fetches at once for admin fills and read-ahead
    read_ahead_segments: int = 2  # segments after the one asked for, brought into memory
    limiter: str = "gradient2"  # adaptive concurrency limit for client requests
    limiter_initial: int = 256  # requests in flight before the limiter has measured (<= max)
    limiter_max: int = 1024  # the most requests in flight the limiter ever allows
    # Shed a share of requests while the event loop runs this late (CPU saturation, which
    # no in-flight count sees), and refuse the rest of a loop turn that has spent this long
    # answering; 0: both off, e.g. when the loop is shared with other work.
    limiter_lag_target_s: float = 0.02
    upstream_connect_timeout_s: float = 3.0
    upstream_read_timeout_s: float = 10.0  # between two chunks of an upstream body
    upstream_head_timeout_s: float = 1.5  # connect + status line + headers, per upstream
    # An upstream with no response head after this: the next one is asked too, and the
    # first to answer wins (a hedged request); 0: off, each waits out its head deadline.
    upstream_hedge_after_s: float = 0.5
    upstream_min_body_bps: float = 32_000.0  # bytes/s on average after 2 s; slower fails
    scrub_bytes_per_s: float = 20 * 10**6  # background re-hash of disk objects; 0: off
    negative_ttl_s: float = 5.0  # how long a 404 is remembered
    parent_token_ttl_s: float = 300.0  # tokens this appliance signs for its parents

    def __post_init__(self) -> None:
        if not is_valid_title_id(self.id):
            raise UserError(f"--id {self.id!r}: use letters, digits, '.', '_' and '-'")
        if not self.upstreams:
            raise UserError("--upstream: at least one upstream URL (an origin or a parent) needed")
        for url in self.upstreams:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise UserError(f"--upstream {url!r}: expected http://host:port")
        for name, value in (("--mem", self.mem_bytes), ("--disk", self.disk_bytes)):
            if value <= 0:
                raise UserError(f"{name} {value}: must be more than 0 bytes")
        if self.policy not in POLICIES:
            raise UserError(f"--policy {self.policy!r}: known policies are {', '.join(POLICIES)}")
        if not self.keys and not self.open:
            raise UserError("no --key given: signed URLs cannot be checked; give --key or --open")
        try:
            key_ring(list(self.keys))
        except ValueError as exc:
            raise UserError(f"--key: {exc}") from None
        if self.background_fills < 1 or self.read_ahead_segments < 0:
            raise UserError("background_fills must be >= 1 and read_ahead_segments >= 0")
        for name in ("limiter_initial", "limiter_max"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} {getattr(self, name)}: must be at least 1")
        if not 0 <= self.limiter_lag_target_s <= 10:
            raise UserError(f"limiter_lag_target_s {self.limiter_lag_target_s}: expected 0-10 s")
        admin_keys = (self.admin_key, *self.previous_admin_keys) if self.admin_key else ()
        if any(len(k) < 16 for k in admin_keys):
            raise UserError("--admin-key: at least 16 characters")
        if not all(k.isprintable() for k in admin_keys):
            raise UserError("--admin-key: control characters cannot go in an HTTP header")
        for name in (
            "lock_timeout_s",
            "upstream_connect_timeout_s",
            "upstream_read_timeout_s",
            "upstream_head_timeout_s",
            "upstream_min_body_bps",
            "negative_ttl_s",
            "parent_token_ttl_s",
            "heartbeat_interval_s",
        ):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} {getattr(self, name)}: must be more than 0")
        if not 0 <= self.upstream_hedge_after_s <= 3600:
            raise UserError(
                f"upstream_hedge_after_s {self.upstream_hedge_after_s}: expected 0-3600 s"
            )
        if self.scrub_bytes_per_s < 0:
            raise UserError(f"scrub_bytes_per_s {self.scrub_bytes_per_s}: must be 0 or more")

    @property
    def public_url(self) -> str:
        """Where players reach this appliance (what steering hands out)."""
        return self.url or f"http://{self.host}:{self.port}"
