"""Rank a fleet's appliances for one play: client IP to site, then title to appliances.

A pure core: values in, a decision out, no I/O and no clock. The steering server and the
fleet simulator call the same code.

**Client IP to site.** ``SiteMap.site_for`` is a longest-prefix match over every site's
CIDRs, IPv4 and IPv6, the way a router picks a BGP route: one dict per prefix length that
occurs, tried longest first, so a lookup costs a few dict probes however many CIDRs there
are. An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``) is matched as its IPv4 address; an
address that no CIDR covers goes to the default site.

**Candidate sites** (``candidate_sites``). The client's site first, then its fallbacks in
order, then theirs, breadth-first, each site once; then every other site by name, so that a
viewer gets an appliance if one is usable anywhere. A client site that is not in ``sites``
has no preferred sites: it gets every site by name. (``SiteMap.site_for`` only returns known
sites, so the server never meets this case.)

**Inside a site: weighted rendezvous hashing.** Each appliance scores the title and the
highest score wins: rendezvous, or highest-random-weight, hashing (Thaler & Ravishankar,
"Using name-based mappings to increase hit rates", IEEE/ACM Trans. Networking 6(1), 1998).
A title lands on the same few appliances every time, so their caches stay hot, and when an
appliance joins or leaves only the titles that it wins or won move. Capacity is the weight,
with the score ``-w / ln(h)`` where h is the hash of (title, appliance) mapped into (0, 1):
each appliance then wins a share ``w / sum(w)`` of titles. This is the logarithmic method of
Schindelhauer & Schomaker, "Weighted distributed hash tables", SPAA 2005 (as the distance
``-ln(h) / w``, lowest wins). The hash is ``xxh3_64(title, seed=xxh3_64(appliance id))``
over UTF-8, its top 52 bits giving h.

**Health and bounded load.** Down (``up=False``) and breaker-open appliances are never
returned. An appliance past its load bound (``egress_mbps > load_bound * capacity_mbps``) or
whose concurrency limiter is shedding is passed over for the next in hash order, as in
consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, "Consistent hashing
with bounded loads", SODA 2018). It is not dropped: overloaded appliances come after every
non-overloaded appliance of *all* candidate sites, in candidate order among themselves. A
viewer is better served by a busy appliance than by none; the price is that a far site with
room is preferred to a near site without.

For many decisions over one fleet snapshot, build a ``RankingIndex`` once (it groups usable
appliances by site and precomputes their hash seeds and load flags) and call its ``rank``;
build a new one when the fleet changes. ``rank()`` does the same from plain values.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from types import MappingProxyType

import xxhash

LOAD_BOUND = 0.8  # fraction of capacity_mbps past which an appliance counts as overloaded

IPAddress = str | ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_UNIT = 2.0**-52  # (52-bit integer + 0.5) * _UNIT lies in (0, 1), both ends excluded
_hash = xxhash.xxh3_64_intdigest


@dataclass(frozen=True)
class Site:
    name: str
    cidrs: tuple[str, ...]  # IPv4 or IPv6 networks whose clients belong here
    fallbacks: tuple[str, ...] = ()  # other sites to try, in order, when none here is usable


@dataclass(frozen=True)
class ApplianceState:
    id: str
    url: str
    site: str
    capacity_mbps: float
    up: bool = True
    breaker_open: bool = False
    egress_mbps: float = 0.0
    shedding: bool = False  # its adaptive concurrency limiter is rejecting requests

    def __post_init__(self) -> None:
        if not self.capacity_mbps >= 0:
            raise ValueError(
                f"appliance {self.id!r}: capacity_mbps must be >= 0, got {self.capacity_mbps!r}"
            )

    @property
    def usable(self) -> bool:
        return self.up and not self.breaker_open

    def overloaded(self, load_bound: float = LOAD_BOUND) -> bool:
        return self.shedding or self.egress_mbps > load_bound * self.capacity_mbps


@dataclass(frozen=True)
class Ranking:
    site: str  # the client's site, as given to rank()
    appliances: tuple[ApplianceState, ...]  # best first


class SiteMap:
    """The sites by name, and a longest-prefix match of client IPs to them."""

    def __init__(self, sites: Sequence[Site], default_site: str) -> None:
        by_name: dict[str, Site] = {}
        for site in sites:
            if site.name in by_name:
                raise ValueError(f"duplicate site name {site.name!r}")
            by_name[site.name] = site
        if default_site not in by_name:
            raise ValueError(
                f"default_site {default_site!r} is not a site; sites: {sorted(by_name)}"
            )
        # version -> prefix length -> network address >> host bits -> site name
        routes: dict[int, dict[int, dict[int, str]]] = {4: {}, 6: {}}
        for site in sites:
            for fallback in site.fallbacks:
                if fallback == site.name or fallback not in by_name:
                    raise ValueError(
                        f"site {site.name!r}: fallback {fallback!r} is not another site"
                    )
            for cidr in site.cidrs:
                try:
                    net = ipaddress.ip_network(cidr)
                except ValueError as e:
                    raise ValueError(f"site {site.name!r}: bad CIDR {cidr!r}: {e}") from None
                if net.version == 6 and net.subnet_of(_V4_MAPPED):  # such addresses match as IPv4
                    raise ValueError(
                        f"site {site.name!r}: CIDR {cidr!r} is IPv4-mapped; write IPv4"
                    )
                key = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
                owner = routes[net.version].setdefault(net.prefixlen, {}).setdefault(key, site.name)
                if owner != site.name:
                    raise ValueError(f"site {site.name!r}: CIDR {cidr!r} is also in site {owner!r}")
        self.sites: Mapping[str, Site] = MappingProxyType(by_name)
        self.default_site = default_site
        # Per version, (host bits, table) from the longest prefix to the shortest.
        self._routes = {
            version: [(bits - plen, by_len[plen]) for plen in sorted(by_len, reverse=True)]
            for version, bits, by_len in ((4, 32, routes[4]), (6, 128, routes[6]))
        }

    def site_for(self, ip: IPAddress) -> str:
        """The site whose longest CIDR holds ip, else the default; ValueError if malformed."""
        version, value = _ip_value(ip)
        for host_bits, table in self._routes[version]:
            site = table.get(value >> host_bits)
            if site is not None:
                return site
        return self.default_site


def _ip_value(ip: IPAddress) -> tuple[int, int]:
    """(4 or 6, the address as an integer), an IPv4-mapped IPv6 address as IPv4."""
    if isinstance(ip, str):
        v6 = ":" in ip
        try:  # ten times faster than ipaddress, and as strict
            packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, ip)
        except OSError:
            ip = ipaddress.ip_address(ip)  # a scoped "fe80::1%eth0", else ValueError naming ip
        else:
            return _unmapped(6 if v6 else 4, int.from_bytes(packed))
    return _unmapped(ip.version, int(ip))


def _unmapped(version: int, value: int) -> tuple[int, int]:
    if version == 6 and value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d
        return 4, value & 0xFFFF_FFFF
    return version, value


def appliance_seed(appliance_id: str) -> int:
    return _hash(appliance_id.encode("utf-8", "surrogatepass"))


def hrw_score(title: str, appliance_id: str, weight: float) -> float:
    """The weighted rendezvous score of an appliance for a title; the highest wins."""
    return _score(title.encode("utf-8", "surrogatepass"), appliance_seed(appliance_id), weight)


def _score(title: bytes, seed: int, weight: float) -> float:
    return -weight / math.log(((_hash(title, seed) >> 12) + 0.5) * _UNIT)


def candidate_sites(
    client_site: str, sites: Mapping[str, Site], others: Iterable[str] = ()
) -> tuple[str, ...]:
    """Site names in the order a client of client_site tries them (see the module doc).

    ``others`` are more site names to put last with the rest, such as sites that appliances
    name but ``sites`` lacks.
    """
    order: dict[str, None] = {}  # an ordered set
    queue = deque([client_site] if client_site in sites else [])
    while queue:
        name = queue.popleft()
        if name not in order:
            order[name] = None
            if name in sites:
                queue.extend(sites[name].fallbacks)
    order.update(dict.fromkeys(sorted({*sites, *others} - order.keys())))
    return tuple(order)


_Entry = tuple[int, float, ApplianceState, bool]  # hash seed, weight, appliance, overloaded
_by_score = itemgetter(0)


class RankingIndex:
    """One fleet snapshot prepared for many decisions; build a new one when the fleet changes."""

    def __init__(
        self,
        sites: Mapping[str, Site],
        appliances: Iterable[ApplianceState],
        *,
        load_bound: float = LOAD_BOUND,
    ) -> None:
        if not load_bound > 0:
            raise ValueError(f"load_bound must be > 0, got {load_bound!r}")
        groups: dict[str, list[_Entry]] = {}
        seen: set[str] = set()
        for a in sorted(appliances, key=attrgetter("id")):  # equal scores keep id order
            if a.id in seen:
                raise ValueError(f"duplicate appliance id {a.id!r}")
            seen.add(a.id)
            if a.usable:
                entry = (appliance_seed(a.id), a.capacity_mbps, a, a.overloaded(load_bound))
                groups.setdefault(a.site, []).append(entry)
        self._sites = sites
        self._groups = groups
        # client site (None: not in sites) -> candidate sites that have usable appliances
        self._orders: dict[str | None, tuple[str, ...]] = {}

    def rank(self, title: str, client_site: str, n: int) -> Ranking:
        """At most n usable appliances for title, best first (see the module doc)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        key = title.encode("utf-8", "surrogatepass")
        ready: list[ApplianceState] = []
        overloaded: list[ApplianceState] = []
        for site in self._candidates(client_site):
            if len(ready) >= n:
                break
            scored = [(_score(key, seed, w), a, over) for seed, w, a, over in self._groups[site]]
            scored.sort(key=_by_score, reverse=True)
            for _, a, over in scored:
                (overloaded if over else ready).append(a)
        return Ranking(client_site, tuple((ready + overloaded)[:n]))

    def _candidates(self, client_site: str) -> tuple[str, ...]:
        key = client_site if client_site in self._sites else None  # bounds the cache
        order = self._orders.get(key)
        if order is None:
            everywhere = candidate_sites(client_site, self._sites, self._groups)
            order = self._orders[key] = tuple(s for s in everywhere if s in self._groups)
        return order


def rank(
    title: str,
    client_site: str,
    sites: Mapping[str, Site],
    appliances: Sequence[ApplianceState],
    n: int,
    *,
    load_bound: float = LOAD_BOUND,
) -> Ranking:
    """At most n usable appliances for title, best first; one decision from plain values."""
    return RankingIndex(sites, appliances, load_bound=load_bound).rank(title, client_site, n)
