"""Steering's ranking core: IP to site, fallback order, rendezvous hashing weighted by
capacity, health and bounded load, checked as properties over arbitrary fleets."""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from steering.ranking import (
    ApplianceState,
    IPAddress,
    RankingIndex,
    Site,
    SiteMap,
    candidate_sites,
    hrw_score,
    rank,
)

TITLES = [f"title-{i:05}" for i in range(2_000)]


def oca(id: str, site: str = "a", capacity_mbps: float = 10_000.0, **state: Any) -> ApplianceState:
    return ApplianceState(id, f"http://{id}.test", site, capacity_mbps, **state)


def by_name(*sites: Site) -> dict[str, Site]:
    return {s.name: s for s in sites}


def top_choices(appliances: Iterable[ApplianceState], titles: list[str]) -> dict[str, str]:
    index = RankingIndex(by_name(Site("a", ())), appliances)
    return {t: index.rank(t, "a", 1).appliances[0].id for t in titles}


def ids(appliances: Iterable[ApplianceState]) -> list[str]:
    return [a.id for a in appliances]


# -- rendezvous hashing: stability and weights ------------------------------------------


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), data=st.data(), salt=st.text(max_size=6))
def test_adding_or_removing_an_appliance_moves_only_the_titles_it_wins(
    n: int, data: st.DataObject, salt: str
) -> None:
    big = [oca(f"{salt}oca-{i}") for i in range(n + 1)]
    x = data.draw(st.sampled_from(big)).id
    small = [a for a in big if a.id != x]
    titles = [salt + t for t in TITLES]
    with_x, without_x = top_choices(big, titles), top_choices(small, titles)

    moved = {t for t in titles if with_x[t] != without_x[t]}
    assert moved == {t for t in titles if with_x[t] == x}
    p = 1 / (n + 1)
    assert abs(len(moved) / len(titles) - p) <= 5 * math.sqrt(p * (1 - p) / len(titles))
    # The others keep their relative order: the whole ranking just loses x.
    big_index = RankingIndex(by_name(Site("a", ())), big)
    small_index = RankingIndex(by_name(Site("a", ())), small)
    for t in titles[:200]:
        full = ids(big_index.rank(t, "a", n + 1).appliances)
        assert ids(small_index.rank(t, "a", n).appliances) == [i for i in full if i != x]


@settings(max_examples=6, deadline=None)
@given(capacities=st.lists(st.integers(1, 10), min_size=2, max_size=5))
@example(capacities=[1, 2, 3])
def test_top_choice_shares_follow_capacity(capacities: list[int]) -> None:
    fleet = [oca(f"oca-{i}", capacity_mbps=c * 1_000.0) for i, c in enumerate(capacities)]
    titles = [f"t{i}" for i in range(20_000)]
    wins = Counter(top_choices(fleet, titles).values())
    for a in fleet:
        share = wins[a.id] / len(titles)
        assert share == pytest.approx(a.capacity_mbps / (sum(capacities) * 1_000.0), abs=0.03)


def test_a_title_lands_on_the_same_appliances_whatever_the_input_order() -> None:
    fleet = [oca(f"oca-{i}", capacity_mbps=1_000.0 * (i + 1)) for i in range(8)]
    sites = by_name(Site("a", ()))
    for t in TITLES[:50]:
        assert rank(t, "a", sites, fleet, 8) == rank(t, "a", sites, fleet[::-1], 8)


# -- health, bounded load, candidate order over arbitrary fleets ------------------------

NAMES = ("a", "b", "c", "d", "e")


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, Site], list[ApplianceState]]:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1))
    sites = {}
    for name in names:
        others = [o for o in names if o != name]
        fallbacks = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
        sites[name] = Site(name, (), tuple(fallbacks))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from((*names, "stray")),  # "stray": a site that sites lacks
                st.sampled_from([0.0, 1.0, 100.0, 10_000.0]),
                st.booleans(),
                st.booleans(),
                st.floats(0, 20_000),
                st.booleans(),
            ),
            max_size=25,
        )
    )
    appliances = [
        oca(f"oca-{i}", site, cap, up=up, breaker_open=br, egress_mbps=egress, shedding=shed)
        for i, (site, cap, up, br, egress, shed) in enumerate(rows)
    ]
    return sites, appliances


decisions = {
    "fleet": fleets(),
    "title": st.text(max_size=12),
    "client_site": st.sampled_from((*NAMES, "nowhere")),
    "n": st.integers(0, 12),
    "load_bound": st.sampled_from([0.5, 0.8, 1.0]),
}


@settings(max_examples=200, deadline=None)
@given(**decisions)
def test_never_an_unusable_appliance_and_never_nothing_while_one_is_usable(
    fleet: tuple[dict[str, Site], list[ApplianceState]],
    title: str,
    client_site: str,
    n: int,
    load_bound: float,
) -> None:
    sites, appliances = fleet
    ranked = rank(title, client_site, sites, appliances, n, load_bound=load_bound).appliances
    assert all(a.up and not a.breaker_open for a in ranked)
    usable = [a for a in appliances if a.up and not a.breaker_open]
    assert len(set(ids(ranked))) == len(ranked) == min(n, len(usable))


@settings(max_examples=200, deadline=None)
@given(**decisions)
def test_no_overloaded_appliance_before_one_with_room(
    fleet: tuple[dict[str, Site], list[ApplianceState]],
    title: str,
    client_site: str,
    n: int,
    load_bound: float,
) -> None:
    sites, appliances = fleet
    ranked = rank(title, client_site, sites, appliances, n, load_bound=load_bound).appliances
    flags = [a.shedding or a.egress_mbps > load_bound * a.capacity_mbps for a in ranked]
    assert flags == sorted(flags)


def plain_rank(
    title: str,
    client_site: str,
    sites: Mapping[str, Site],
    appliances: list[ApplianceState],
    n: int,
    load_bound: float,
) -> list[str]:
    """The rules as the module doc states them, with no index, grouping or early exit."""
    order: list[str] = []
    queue = [client_site] if client_site in sites else []
    while queue:
        name = queue.pop(0)
        if name not in order:
            order.append(name)
            queue += sites[name].fallbacks if name in sites else ()
    order += sorted({*sites, *(a.site for a in appliances)} - set(order))

    def key(a: ApplianceState) -> tuple[int, float, str]:
        return order.index(a.site), -hrw_score(title, a.id, a.capacity_mbps), a.id

    usable = [a for a in appliances if a.up and not a.breaker_open]
    busy = [a for a in usable if a.shedding or a.egress_mbps > load_bound * a.capacity_mbps]
    ready = [a for a in usable if a not in busy]
    return ids((sorted(ready, key=key) + sorted(busy, key=key))[:n])


@settings(max_examples=200, deadline=None)
@given(fleet=fleets(), title=st.text(max_size=12), n=st.integers(0, 12))
def test_the_index_agrees_with_the_rules_read_plainly(
    fleet: tuple[dict[str, Site], list[ApplianceState]], title: str, n: int
) -> None:
    sites, appliances = fleet
    index = RankingIndex(sites, appliances, load_bound=0.8)
    # One index for every client site, twice: later calls use its cached site orders.
    for client_site in (*NAMES, "nowhere", "stray") * 2:
        ranking = index.rank(title, client_site, n)
        assert ranking.site == client_site
        assert ids(ranking.appliances) == plain_rank(title, client_site, sites, appliances, n, 0.8)


# -- candidate sites, fallbacks, edge cases ---------------------------------------------

CHAIN = by_name(
    Site("a", (), ("c", "b")),
    Site("b", (), ("d",)),
    Site("c", (), ("e", "a")),
    Site("d", ()),
    Site("e", ()),
    Site("g", ()),
    Site("f", ()),
)


def test_fallbacks_breadth_first_then_every_other_site_by_name() -> None:
    assert candidate_sites("a", CHAIN) == ("a", "c", "b", "e", "d", "f", "g")
    fleet = [oca(f"{s}1", s) for s in CHAIN]
    ranked = rank("t", "a", CHAIN, fleet, 10).appliances
    assert [a.site for a in ranked] == ["a", "c", "b", "e", "d", "f", "g"]


def test_a_site_with_nothing_usable_falls_back() -> None:
    fleet = [oca("a1", "a", up=False), oca("a2", "a", breaker_open=True), oca("b1", "b")]
    sites = by_name(Site("a", (), ("b",)), Site("b", ()), Site("empty", (), ("b",)))
    for client_site in ("a", "empty"):
        ranking = rank("t", client_site, sites, fleet, 3)
        assert ranking.site == client_site
        assert ids(ranking.appliances) == ["b1"]


def test_an_unknown_client_site_gets_every_site_by_name() -> None:
    fleet = [oca("c1", "c"), oca("a1", "a"), oca("s1", "stray")]
    sites = by_name(Site("c", (), ("a",)), Site("a", ()))
    ranking = rank("t", "nowhere", sites, fleet, 5)
    assert ranking.site == "nowhere"
    assert ids(ranking.appliances) == ["a1", "c1", "s1"]


def test_nothing_usable_anywhere_is_an_empty_ranking() -> None:
    fleet = [oca("a1", up=False), oca("a2", breaker_open=True)]
    assert rank("t", "a", by_name(Site("a", ())), fleet, 5).appliances == ()
    assert rank("t", "a", {}, [], 5).appliances == ()


def test_an_overloaded_local_appliance_goes_after_a_remote_one_with_room() -> None:
    sites = by_name(Site("a", (), ("b",)), Site("b", ()))
    busy = [oca("a1", "a", shedding=True), oca("a2", "a", capacity_mbps=100.0, egress_mbps=81.0)]
    fleet = [*busy, oca("b1", "b")]
    ranked = ids(rank("t", "a", sites, fleet, 3).appliances)
    assert ranked[0] == "b1"
    assert sorted(ranked[1:]) == ["a1", "a2"]


def test_the_load_bound_is_a_strict_fraction_of_capacity() -> None:
    at_bound = oca("a1", capacity_mbps=100.0, egress_mbps=80.0)
    past_bound = oca("a2", capacity_mbps=100.0, egress_mbps=80.5)
    assert not at_bound.overloaded() and past_bound.overloaded()
    assert not past_bound.overloaded(load_bound=0.9)
    sites = by_name(Site("a", ()))
    for title in TITLES[:20]:
        assert ids(rank(title, "a", sites, [past_bound, at_bound], 2).appliances) == ["a1", "a2"]


def test_at_most_n() -> None:
    fleet = [oca(f"oca-{i}") for i in range(6)]
    sites = by_name(Site("a", ()))
    assert len(rank("t", "a", sites, fleet, 4).appliances) == 4
    assert rank("t", "a", sites, fleet, 0).appliances == ()
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        rank("t", "a", sites, fleet, -1)


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: oca("oca-7", capacity_mbps=-1.0), ["oca-7", "-1.0"]),
        (lambda: RankingIndex({}, [oca("x"), oca("x", "b")]), ["'x'"]),
        (lambda: RankingIndex({}, [], load_bound=0.0), ["load_bound", "0.0"]),
    ],
)
def test_bad_fleet_values_are_named(make: Callable[[], object], names: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        make()
    assert all(name in str(e.value) for name in names)


# -- client IP to site ------------------------------------------------------------------

ROUTES = SiteMap(
    [
        Site("a", ("10.0.0.0/8", "2001:db8::/32")),
        Site("b", ("10.1.0.0/16", "2001:db8:1::/48")),
        Site("c", ("10.1.2.0/24",)),
        Site("ix", ("192.0.2.0/24",)),
    ],
    default_site="ix",
)


@pytest.mark.parametrize(
    ("ip", "site"),
    [
        ("10.1.2.3", "c"),
        ("10.1.3.4", "b"),
        ("10.2.0.1", "a"),
        ("11.0.0.1", "ix"),
        ("2001:db8:1::5", "b"),
        ("2001:db8:2::5", "a"),
        ("2001:db9::1", "ix"),
        ("::ffff:10.1.2.3", "c"),  # IPv4-mapped: matched as 10.1.2.3
        ("::a01:203", "ix"),  # the same 32 bits, but an IPv6 address: not 10.1.2.3
        ("fe80::1%eth0", "ix"),  # scoped
        (ipaddress.IPv4Address("10.1.3.4"), "b"),
        (ipaddress.IPv6Address("::ffff:10.2.0.1"), "a"),
        (ipaddress.IPv6Address("2001:db8:1::5"), "b"),
    ],
)
def test_longest_prefix_wins(ip: IPAddress, site: str) -> None:
    assert ROUTES.site_for(ip) == site


@pytest.mark.parametrize(
    "ip", ["", "10.1.2", "10.1.2.256", "010.1.2.3", "10.1.2.3/32", " 10.1.2.3", "2001:db8::g", "x"]
)
def test_a_malformed_ip_is_a_value_error(ip: str) -> None:
    with pytest.raises(ValueError):
        ROUTES.site_for(ip)


def test_a_zero_length_prefix_catches_every_address_of_its_version() -> None:
    routes = SiteMap([Site("all4", ("0.0.0.0/0",)), Site("d", ())], default_site="d")
    assert routes.site_for("203.0.113.9") == "all4"
    assert routes.site_for("2001:db8::1") == "d"


@st.composite
def route_tables(draw: st.DrawFn) -> tuple[list[Site], list[str]]:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    nets = draw(
        st.lists(
            st.builds(
                lambda addr, plen: cls((addr, plen), strict=False),
                st.integers(0, 2**bits - 1),
                st.integers(0, bits),
            ),
            unique=True,
            max_size=12,
        )
    )
    address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    # Addresses in the networks, or just past their ends, and anywhere.
    near = [st.integers(0, net.num_addresses).map(int(net.network_address).__add__) for net in nets]
    values = draw(st.lists(st.one_of(st.integers(0, 2**bits - 1), *near), max_size=20))
    ips = [str(address(v % 2**bits)) for v in values]
    sites = [Site(f"s{i}", (str(net),)) for i, net in enumerate(nets)]
    return [*sites, Site("default", ())], ips


@settings(max_examples=200, deadline=None)
@given(route_tables())
def test_site_for_agrees_with_a_linear_scan(table: tuple[list[Site], list[str]]) -> None:
    sites, ips = table
    routes = SiteMap(sites, "default")
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        matches = [
            (net.prefixlen, s.name)
            for s in sites
            for net in map(ipaddress.ip_network, s.cidrs)
            if net.version == addr.version and addr in net
        ]
        assert routes.site_for(ip) == max(matches, default=(-1, "default"))[1]


@pytest.mark.parametrize(
    ("sites", "default", "names"),
    [
        ([Site("a", ()), Site("a", ())], "a", ["duplicate", "'a'"]),
        ([Site("a", ())], "zz", ["default_site", "'zz'"]),
        ([Site("a", (), ("zz",))], "a", ["'a'", "fallback", "'zz'"]),
        ([Site("a", (), ("a",))], "a", ["'a'", "fallback"]),
        ([Site("a", ("10.0.0.0/33",))], "a", ["'a'", "'10.0.0.0/33'"]),
        ([Site("a", ("10.0.0.1/8",))], "a", ["'a'", "'10.0.0.1/8'", "host bits"]),
        ([Site("a", ("banana",))], "a", ["'a'", "'banana'"]),
        ([Site("a", ("::ffff:10.0.0.0/104",))], "a", ["'a'", "'::ffff:10.0.0.0/104'", "IPv4"]),
        (
            [Site("a", ("10.0.0.0/8",)), Site("b", ("10.0.0.0/8",))],
            "a",
            ["'a'", "'b'", "10.0.0.0/8"],
        ),
    ],
)
def test_site_map_errors_name_the_site_and_the_bad_value(
    sites: list[Site], default: str, names: list[str]
) -> None:
    with pytest.raises(ValueError) as e:
        SiteMap(sites, default)
    assert all(name in str(e.value) for name in names), str(e.value)
