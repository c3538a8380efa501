"""The deployment file: the example loads, every bad value is one precise error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streamcdn.config import ConfigError, load
from tests.conftest import streamcdn_cmd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "deployment.toml"

MINIMAL = """
[keys]
signing = ["k1:0123456789abcdef0123"]
admin = "admin-key-0123456789"
[origin]
url = "http://127.0.0.1:8082"
[[sites]]
name = "a"
cidrs = ["10.0.0.0/8", "fd00::/16"]
fallbacks = ["b"]
[[sites]]
name = "b"
cidrs = ["192.0.2.0/24"]
[[appliances]]
id = "p1"
url = "http://127.0.0.1:8102"
site = "b"
capacity_mbps = 40000
[[appliances]]
id = "c1"
url = "http://127.0.0.1:8100"
site = "a"
capacity_mbps = 10000
upstreams = ["p1", "origin"]
mem = "1GB"
cache_dir = "cache/c1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_the_example_in_the_repo_loads() -> None:
    d = load(EXAMPLE)
    assert [s.name for s in d.sites] == ["isp-a", "ix"]
    a1 = d.appliance("a1")
    assert a1.upstreams == ("http://127.0.0.1:8102", "http://127.0.0.1:8082")
    assert a1.port == 8100 and a1.mem_bytes == 256 * 10**6
    assert d.heartbeat_key("a1") == d.signing_keys[0]


def test_a_minimal_file_resolves_names_defaults_and_paths(tmp_path: Path) -> None:
    d = load(write(tmp_path, MINIMAL))
    c1, p1 = d.appliance("c1"), d.appliance("p1")
    assert c1.upstreams == ("http://127.0.0.1:8102", "http://127.0.0.1:8082")
    assert p1.upstreams == ("http://127.0.0.1:8082",)  # none given: the origin
    assert c1.cache_dir == tmp_path / "cache" / "c1"  # relative to the file
    assert c1.mem_bytes == 10**9 and c1.disk_bytes is None
    assert d.default_site == "a" and d.load_bound == 0.8 and d.down_after_missed == 3
    with pytest.raises(ConfigError, match=r"no appliance 'zz' \(known: p1, c1\)"):
        d.appliance("zz")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("capacity_mbps = 10000", 'capacity_mbps = "fast"'),
         "appliances[1].capacity_mbps: expected a number > 0 and <= 1e+07, got 'fast'"),
        (("capacity_mbps = 10000", "capacity_mbps = -5"), "appliances[1].capacity_mbps"),
        (("capacity_mbps = 10000", "capacity_mbps = true"), "got True"),
        (('"10.0.0.0/8"', '"10.0.0.1/8"'), "sites[0].cidrs: expected an IPv4 or IPv6 network"),
        (('"10.0.0.0/8"', '"banana"'), "got 'banana'"),
        (('fallbacks = ["b"]', 'fallbacks = ["nowhere"]'), "sites[0].fallbacks: expected another site's name"),
        (('site = "a"', 'site = "mars"'), "appliances[1].site: expected one of the sites"),
        (('upstreams = ["p1", "origin"]', 'upstreams = ["c1"]'), "appliances[1].upstreams"),
        (('upstreams = ["p1", "origin"]', 'upstreams = ["ftp://x"]'), "appliances[1].upstreams"),
        (('mem = "1GB"', 'mem = "lots"'), "appliances[1].mem: expected a size like '256MB'"),
        (('id = "p1"', 'id = "c1"'), "appliances[0].id: expected an id no other appliance has"),
        (('id = "c1"', 'id = "../x"'), "appliances[1].id"),
        (('url = "http://127.0.0.1:8100"', 'url = "127.0.0.1:8100"'), "appliances[1].url: expected an http(s) URL"),
        (('url = "http://127.0.0.1:8100"', 'url = "http://h:99999"'), "valid port"),
        (('"k1:0123456789abcdef0123"', '"short"'), "keys.signing: expected 'KEYID:SECRET'"),
        (('admin = "admin-key-0123456789"', 'admin = "x"'), "keys.admin: expected a key of at least 16"),
        (("capacity_mbps = 10000", "capacity_mbs = 10000"), "appliances[1]"),
        (("[origin]", "[origin]\nport = 1"), "origin.port: unknown key (known here: store, url)"),
        (('url = "http://127.0.0.1:8082"', ""), "origin.url: missing"),
        (("[keys]", "keys = 3\n[nokeys]"), "keys: expected a table"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_error_naming_key_value_and_expectation(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in MINIMAL
    # Replace in the last appliance for appliance keys, else the first occurrence.
    text = MINIMAL
    if old in ("capacity_mbps = 10000", 'url = "http://127.0.0.1:8100"'):
        i = text.rindex(old)
        text = text[:i] + new + text[i + len(old) :]
    else:
        text = text.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    text = str(err.value)
    assert message in text and "\n" not in text and str(tmp_path) in text


def test_not_toml_not_utf8_missing_and_huge_files(tmp_path: Path) -> None:
    cases = {
        b"[keys\n": "not valid TOML",
        b"\xff\xfe": "not UTF-8",
        b"# " + b"x" * (2 << 20): "larger than",
    }
    for raw, message in cases.items():
        path = tmp_path / "bad.toml"
        path.write_bytes(raw)
        with pytest.raises(ConfigError, match=message):
            load(path)
    with pytest.raises(ConfigError, match="No such file"):
        load(tmp_path / "missing.toml")


def test_serve_reads_its_part_and_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, MINIMAL.replace("capacity_mbps = 40000", "capacity_mbps = 0"))
    for args in (["appliance", "--id", "c1"], ["origin"]):
        res = subprocess.run(
            streamcdn_cmd("serve", *args, "--config", str(bad)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 1
        assert res.stderr.count("\n") == 1 and "appliances[0].capacity_mbps" in res.stderr
    good = write(tmp_path, MINIMAL)
    res = subprocess.run(
        streamcdn_cmd("serve", "appliance", "--id", "nope", "--config", str(good)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "no appliance 'nope' (known: p1, c1)" in res.stderr


def test_an_appliance_may_tune_its_upstream_deadlines_and_scrub_rate(tmp_path: Path) -> None:
    tuned = "\nlock_timeout_s = 2\nupstream_head_timeout_s = 1.2\nupstream_min_body_bps = 50000"
    off = "\nscrub_bytes_per_s = 0\nlimiter_lag_target_s = 0\nupstream_hedge_after_s = 0"
    c1 = load(write(tmp_path, MINIMAL + tuned + off)).appliance("c1")
    assert (c1.lock_timeout_s, c1.upstream_head_timeout_s) == (2.0, 1.2)
    assert (c1.upstream_min_body_bps, c1.scrub_bytes_per_s) == (50000.0, 0.0)  # 0: no scrub
    assert c1.limiter_lag_target_s == 0.0  # 0: no shedding on the loop's delay
    assert c1.upstream_hedge_after_s == 0.0  # 0: no hedged requests
    assert load(write(tmp_path, MINIMAL + "\nupstream_hedge_after_s = 0.25")).appliance(
        "c1"
    ).upstream_hedge_after_s == pytest.approx(0.25)
    for bad in (
        "scrub_bytes_per_s = -1",
        "scrub_bytes_per_s = false",
        "upstream_head_timeout_s = 0",
        "limiter_lag_target_s = 11",
        "upstream_hedge_after_s = -0.5",
        'upstream_hedge_after_s = "fast"',
    ):
        with pytest.raises(ConfigError, match=bad.split(" ")[0]):
            load(write(tmp_path, MINIMAL + "\n" + bad))
    with pytest.raises(ConfigError, match=r"upstream_hedge_after_s: .*\(or 0: off\), got -0.5"):
        load(write(tmp_path, MINIMAL + "\nupstream_hedge_after_s = -0.5"))
    with pytest.raises(ConfigError, match=r"lock_timeout_s: .*<= 3600, got 0$"):
        load(write(tmp_path, MINIMAL + "\nlock_timeout_s = 0"))  # 0 is not "off" for it


def test_an_appliance_may_refuse_chaos(tmp_path: Path) -> None:
    assert load(write(tmp_path, MINIMAL)).appliance("c1").chaos  # on unless turned off
    assert not load(write(tmp_path, MINIMAL + "\nchaos = false")).appliance("c1").chaos
    with pytest.raises(ConfigError, match="chaos"):
        load(write(tmp_path, MINIMAL + '\nchaos = "no"'))
