"""Control's edge (what Zuul does for Netflix): who the client is, how fast it may go,
and the headers every answer carries.

- The client's address is the socket's peer, unless that peer is a configured trusted
  proxy, in which case the right-most ``X-Forwarded-For`` entry that is not itself a
  trusted proxy is the client (RFC 7239 section 7.4: only believe your own proxies).
- Token buckets per key (client IP for every route, account for plays), in memory and
  bounded; past the limit the answer is 429 with ``Retry-After``.
- Security headers: nosniff, no framing, no referrer, a strict CSP (pages relax it for
  themselves), HSTS when served over TLS.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Sequence

from aiohttp import web

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORWARDED_ENTRIES = 20

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000"


class ClientAddress:
    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self.trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(c) for c in trusted_proxies
        )

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def of(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's IP address as a string."""
        peer = peer or "0.0.0.0"
        if not self.trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")][-MAX_FORWARDED_ENTRIES:]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # a malformed chain: trust none of it
            if not self._is_trusted(hop):
                return hop
        return peer


class RateLimiter:
    """Token buckets: ``rate_per_s`` sustained, ``burst`` at once, per key."""

    def __init__(self, rate_per_s: float, burst: float, *, max_keys: int = 100_000) -> None:
        if not rate_per_s > 0 or not burst >= 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str, now: float) -> float:
        """0 if allowed (a token is taken), else the seconds until one is available."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # most recently used last
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


def too_many(wait_s: float, what: str) -> web.HTTPTooManyRequests:
    return web.HTTPTooManyRequests(
        text=f"too many {what}; retry later",
        headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
    )


def add_security_headers(response: web.StreamResponse, *, tls: bool) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    if tls:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
