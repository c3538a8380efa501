"""Eviction policies: the behaviour a viewer or an operator would notice, and invariants that
hold after any sequence of operations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policies import DEFAULT_POLICY, POLICIES, EvictionPolicy, make_policy
from appliance.policies.cursors import MAX_CURSORS, STALE_BEATS, Cursors, parse_segment

KB = 1_000
MB = 1_000_000


def seg(title: str, n: int, rendition: str = "720p") -> str:
    return f"titles/{title}/{rendition}/seg_{n:05d}.m4s"


def play(policy: EvictionPolicy, requests: list[tuple[str, int]]) -> list[bool]:
    """Drive a policy the way a tier does; returns hit or miss per request."""
    hits = []
    for key, size in requests:
        hit = policy.hit(key)
        if not hit:
            evicted = policy.admit(key, size)
            assert not set(evicted) & set(policy.keys())
        hits.append(hit)
    policy.check_invariants()
    return hits


@pytest.fixture(params=sorted(POLICIES))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


# -- registry ---------------------------------------------------------------------------


def test_registry_names_every_policy_and_the_default_is_registered() -> None:
    assert {"lru", "s3fifo", DEFAULT_POLICY} <= set(POLICIES)
    for registered, policy in POLICIES.items():
        assert policy.name == registered
    assert DEFAULT_POLICY not in {"lru", "s3fifo"}  # our own design is the default


def test_unknown_policy_error_names_it_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        make_policy("clairvoyant", 10 * MB)
    message = str(info.value)
    assert "clairvoyant" in message
    for known in POLICIES:
        assert known in message


@pytest.mark.parametrize("capacity", [0, -1, 1.5])
def test_bad_capacity_is_refused(name: str, capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        make_policy(name, capacity)  # type: ignore[arg-type]


def test_negative_size_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="size"):
        make_policy(name, MB).admit("a", -1)


# -- every policy -------------------------------------------------------------------------


def test_hit_only_for_resident_objects(name: str) -> None:
    policy = make_policy(name, 10 * KB)
    assert policy.hit("a") is False
    policy.admit("a", KB)
    assert "a" in policy
    assert policy.hit("a") is True
    assert list(policy.keys()) == ["a"]
    assert len(policy) == 1


def test_object_larger_than_capacity_is_declined_and_evicts_nothing(name: str) -> None:
    policy = make_policy(name, 3 * MB)
    play(policy, [("small", KB)])
    assert policy.admit("huge", 3 * MB + 1) == []
    assert "huge" not in policy
    assert "small" in policy
    assert policy.used_bytes == KB
    policy.check_invariants()


def test_remove_forgets_the_object_and_frees_its_bytes(name: str) -> None:
    policy = make_policy(name, 10 * KB)
    play(policy, [("a", KB), ("b", 2 * KB)])
    policy.remove("a")
    policy.remove("never-there")
    assert "a" not in policy
    assert policy.hit("a") is False
    assert policy.used_bytes == 2 * KB
    policy.check_invariants()


def test_readmitting_a_resident_object_updates_its_size(name: str) -> None:
    policy = make_policy(name, 10 * KB)
    play(policy, [("a", KB)])
    assert policy.admit("a", 3 * KB) == []
    assert "a" in policy
    assert policy.used_bytes == 3 * KB
    policy.check_invariants()


def test_a_tiny_capacity_where_the_small_queue_rounds_to_nothing_still_works(name: str) -> None:
    policy = make_policy(name, 5)
    play(policy, [("a", 2), ("a", 2), ("b", 2), ("b", 2), ("c", 2), ("d", 3), ("a", 2)])
    assert policy.used_bytes <= 5


def test_bytes_held_never_exceed_capacity_with_playlists_and_segments(name: str) -> None:
    policy = make_policy(name, 20 * MB)
    requests = []
    for i in range(2_000):
        title = f"t{i % 7}"
        requests.append((f"titles/{title}/720p/index.m3u8", 1_500))
        requests.append((seg(title, i % 40), 200 * KB + (i * 7919) % (3 * MB)))
    play(policy, requests)
    assert 0 < policy.used_bytes <= policy.capacity_bytes


# -- lru --------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used() -> None:
    lru = make_policy("lru", 3 * KB)
    play(lru, [("a", KB), ("b", KB), ("c", KB), ("a", KB)])
    assert lru.admit("d", KB) == ["b"]
    assert lru.admit("e", 2 * KB) == ["c", "a"]  # as many as the bytes need, oldest first
    assert set(lru.keys()) == {"d", "e"}


# -- the scan-resistant policies ------------------------------------------------------------

HOT = [(f"hot{i}", 10 * KB) for i in range(40)]
CRAWL = [(seg(f"crawled{i // 500}", i % 500, "1080p"), 10 * KB) for i in range(5_000)]


@pytest.mark.parametrize("policy_name", ["s3fifo", DEFAULT_POLICY])
def test_a_crawler_reading_everything_once_does_not_flush_the_hot_set(policy_name: str) -> None:
    policy = make_policy(policy_name, 1 * MB)  # room for 100 objects: the hot set is 40
    play(policy, HOT * 3)
    play(policy, CRAWL)
    assert all(play(policy, HOT))
    assert sum(key in policy for key, _ in CRAWL) <= 100 - len(HOT)  # only the room left


def test_lru_is_flushed_by_the_same_crawler() -> None:
    lru = make_policy("lru", 1 * MB)
    play(lru, HOT * 3)
    play(lru, CRAWL)
    assert not any(play(lru, HOT))


def test_s3fifo_one_hit_wonders_leave_through_the_small_queue_not_main() -> None:
    policy = make_policy("s3fifo", 1 * MB)
    play(policy, HOT * 2)
    play(policy, [(f"once{i}", 10 * KB) for i in range(200)])
    # The hot set sits in main; the one-hit wonders only ever took the rest of the room.
    assert all(key in policy for key, _ in HOT)


def test_s3fifo_a_key_back_soon_after_eviction_goes_straight_to_main() -> None:
    policy = make_policy("s3fifo", 1 * MB)
    play(policy, [("back", 10 * KB)] + [(f"once{i}", 10 * KB) for i in range(150)])
    assert "back" not in policy
    play(policy, [("back", 10 * KB)])  # remembered by the ghost queue: admitted into main
    play(policy, [(f"later{i}", 10 * KB) for i in range(150)])
    assert "back" in policy


def test_large_one_timers_do_not_flush_small_hot_objects() -> None:
    policy = make_policy(DEFAULT_POLICY, 20 * MB)
    playlists = [(f"titles/t{i}/720p/index.m3u8", 1_500) for i in range(100)]
    play(policy, playlists * 3)
    play(policy, [(f"titles/x/1080p/big{i}.m4s", 3 * MB) for i in range(50)])
    assert all(play(policy, playlists))


def trailing_viewers(gap_segments: int, segments: int) -> list[tuple[str, int]]:
    """Two viewers on one rendition, the second gap_segments behind, while one-off viewers
    of other titles (three segments per beat) churn the cache."""
    requests: list[tuple[str, int]] = []
    for beat in range(segments + gap_segments):
        if beat < segments:
            requests.append((seg("lead", beat), MB))
        if beat >= gap_segments:
            requests.append((seg("lead", beat - gap_segments), MB))
        requests += [(seg(f"other{beat}", n), MB) for n in range(3)]
    return requests


@pytest.mark.parametrize("policy_name", ["lru", "s3fifo", DEFAULT_POLICY])
def test_a_trailing_viewer_finds_what_the_viewer_ahead_fetched(policy_name: str) -> None:
    warm_up = [(seg(f"warm{i}", n), MB) for i in range(10) for n in range(20)]
    policy = make_policy(policy_name, 40 * MB)  # 40 segments; the gap takes 4 x 16 = 64
    play(policy, warm_up)
    requests = trailing_viewers(gap_segments=16, segments=200)
    hits = play(policy, requests)
    trailing_hits = sum(
        hit for (key, _), hit in zip(requests, hits, strict=True) if key.startswith("titles/lead")
    )
    if policy_name == DEFAULT_POLICY:
        assert trailing_hits >= 180  # of the trailing viewer's 200 segments
    else:
        assert trailing_hits < 20


# -- cursors ------------------------------------------------------------------------------


def test_parse_segment_reads_hls_segment_keys_only() -> None:
    assert parse_segment("titles/calm/720p/seg_00041.m4s") == ("titles/calm/720p", 41)
    assert parse_segment("titles/calm/720p/index.m3u8") is None
    assert parse_segment("titles/calm/720p/init.mp4") is None
    assert parse_segment("titles/calm/720p/seg_x.m4s") is None
    assert parse_segment("seg_00001.m4s") is None
    assert parse_segment("12345") is None


def test_cursor_is_behind_segments_ahead_of_a_viewer_until_it_passes_or_goes_stale() -> None:
    cursors = Cursors()
    for n in range(5):
        cursors.observe(seg("a", n))
    assert cursors.behind(seg("a", 9), horizon_segments=10)
    assert not cursors.behind(seg("a", 30), horizon_segments=10)  # beyond the horizon
    assert not cursors.behind(seg("a", 3), horizon_segments=10)  # already passed
    assert not cursors.behind(seg("a", 9, "1080p"), horizon_segments=10)  # other rendition
    for _ in range(int(STALE_BEATS * cursors.beat_ticks) + 1):
        cursors.observe("titles/b/master.m3u8")
    assert not cursors.behind(seg("a", 9), horizon_segments=10)  # the viewer left


def test_cursors_per_rendition_are_bounded() -> None:
    cursors = Cursors()
    for n in range(0, 10 * MAX_CURSORS, 2):  # every request a new viewer
        cursors.observe(seg("a", n))
    assert len(cursors) == MAX_CURSORS


# -- any sequence of operations -------------------------------------------------------------

KEYS = st.sampled_from(
    [f"k{i}" for i in range(6)] + [seg("t", n) for n in range(6)] + [seg("u", n) for n in range(3)]
)
PER_MILLE = st.integers(0, 1_100)  # of the capacity: some objects do not fit
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("hit"), KEYS),
        st.tuples(st.just("admit"), KEYS, PER_MILLE),
        st.tuples(st.just("remove"), KEYS),
    ),
    max_size=120,
)


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=150, deadline=None)
@given(capacity=st.sampled_from([1, 60, 10 * KB]), ops=OPS)
def test_invariants_hold_after_any_operations(name: str, capacity: int, ops: list[tuple]) -> None:
    policy = make_policy(name, capacity)
    for op, key, *per_mille in ops:
        resident = key in policy
        if op == "hit":
            assert policy.hit(key) is resident
        elif op == "admit":
            size = capacity * per_mille[0] // 1_000
            evicted = policy.admit(key, size)
            assert key not in evicted
            assert not any(victim in policy for victim in evicted)
            if size > capacity:
                assert key not in policy
        else:
            policy.remove(key)
            assert key not in policy
        policy.check_invariants()
        keys = list(policy.keys())
        assert len(keys) == len(set(keys)) == len(policy)
        assert all(k in policy for k in keys)
