from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.accounts import (
    Account,
    AccountError,
    Accounts,
    LoginThrottle,
    Reason,
    ScryptParams,
    entitled,
    hash_password,
    normalise_email,
    verify_password,
)

FAST = ScryptParams(n=2**10)  # the real cost (2**14) only where timing is the point
T0 = 1_700_000_000.0
PASSWORD = "correct horse"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "control.db"


@pytest.fixture
def accounts(db: Path) -> Iterator[Accounts]:
    a = Accounts(db, session_ttl_s=3600, scrypt=FAST)
    yield a
    a.close()


def test_create_login_authenticate_logout(accounts: Accounts) -> None:
    account = accounts.create(" Alice@Example.COM ", PASSWORD, plan="premium", now=T0)
    assert account == Account(account.id, "alice@example.com", "premium", T0)

    session = accounts.login("ALICE@example.com", PASSWORD, now=T0 + 10)
    assert session.account_id == account.id
    assert session.expires_at == T0 + 10 + 3600
    assert accounts.authenticate(session.token, now=T0 + 20) == account

    assert accounts.logout(session.token)
    assert accounts.authenticate(session.token, now=T0 + 21) is None
    assert not accounts.logout(session.token)


def test_sessions_expire_and_are_purged(accounts: Accounts) -> None:
    accounts.create("a@example.com", PASSWORD, now=T0)
    early = accounts.login("a@example.com", PASSWORD, now=T0)
    late = accounts.login("a@example.com", PASSWORD, now=T0 + 1000)
    assert accounts.authenticate(early.token, now=T0 + 3599) is not None
    assert accounts.authenticate(early.token, now=T0 + 3600) is None  # expires_at is exclusive
    assert accounts.purge_expired(T0 + 3600) == 1
    assert accounts.authenticate(late.token, now=T0 + 3600) is not None
    assert accounts.purge_expired(T0 + 3600) == 0


def test_accounts_persist_across_instances(db: Path) -> None:
    first = Accounts(db, scrypt=FAST)
    first.create("a@example.com", PASSWORD, now=T0)
    token = first.login("a@example.com", PASSWORD, now=T0).token
    first.close()
    second = Accounts(db, scrypt=FAST)
    assert second.authenticate(token, now=T0 + 1) is not None
    second.close()


@pytest.mark.parametrize(
    "token",
    ["", "x" * 201, "tökén", "\x00", "a" * 43, "'; DROP TABLE sessions; --"],
)
def test_authenticate_refuses_unknown_and_malformed_tokens(accounts: Accounts, token: str) -> None:
    accounts.create("a@example.com", PASSWORD, now=T0)
    accounts.login("a@example.com", PASSWORD, now=T0)
    assert accounts.authenticate(token, now=T0) is None
    assert not accounts.logout(token)


def test_tokens_and_passwords_are_not_stored_in_clear(db: Path, accounts: Accounts) -> None:
    accounts.create("a@example.com", PASSWORD, now=T0)
    token = accounts.login("a@example.com", PASSWORD, now=T0).token
    accounts.close()  # checkpoints the WAL into the main file
    raw = b"".join(p.read_bytes() for p in db.parent.glob("control.db*"))
    assert b"a@example.com" in raw  # we are reading the right file
    assert token.encode() not in raw
    assert PASSWORD.encode() not in raw


@pytest.mark.parametrize("variant", ["a@example.com", "A@EXAMPLE.COM", " a@Example.com\t"])
def test_duplicate_email_in_any_case_is_taken(accounts: Accounts, variant: str) -> None:
    accounts.create("a@example.com", PASSWORD, now=T0)
    with pytest.raises(AccountError) as err:
        accounts.create(variant, "another password", now=T0)
    assert err.value.reason is Reason.EMAIL_TAKEN


@pytest.mark.parametrize(
    "email",
    [
        "",
        "no-at-sign",
        "@example.com",
        "a@",
        "a@@example.com",
        "a b@example.com",
        "a@exa mple.com",
        "a\x00@example.com",
        "a\n@example.com",
        "a\u200f@example.com",  # right-to-left mark
        "a@example..com",
        "a" * 243 + "@example.com",  # 255 characters
    ],
)
def test_bad_emails_are_refused(accounts: Accounts, email: str) -> None:
    with pytest.raises(AccountError) as err:
        accounts.create(email, PASSWORD, now=T0)
    assert err.value.reason is Reason.INVALID_EMAIL


def test_email_normalisation() -> None:
    assert normalise_email("  Bob.Smith@Example.ORG ") == "bob.smith@example.org"
    assert normalise_email("jose\u0301@example.com") == "jos\u00e9@example.com"  # NFC
    assert normalise_email("a" * 242 + "@example.com") == "a" * 242 + "@example.com"  # 254


@pytest.mark.parametrize("password", ["", "short", "x" * 7, "y" * 1025])
def test_weak_passwords_are_refused(accounts: Accounts, password: str) -> None:
    with pytest.raises(AccountError) as err:
        accounts.create("a@example.com", password, now=T0)
    assert err.value.reason is Reason.WEAK_PASSWORD


def test_password_length_bounds_are_inclusive(accounts: Accounts) -> None:
    accounts.create("a@example.com", "x" * 8, now=T0)
    accounts.create("b@example.com", "ü" * 1024, now=T0)
    assert accounts.login("b@example.com", "ü" * 1024, now=T0).account_id


def test_unknown_plan_is_refused(accounts: Accounts) -> None:
    with pytest.raises(AccountError) as err:
        accounts.create("a@example.com", PASSWORD, plan="gold", now=T0)
    assert err.value.reason is Reason.INVALID_PLAN


def test_wrong_password_and_unknown_email_fail_alike(accounts: Accounts) -> None:
    accounts.create("a@example.com", PASSWORD, now=T0)
    failures = []
    for email, password in [
        ("a@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("a@example.com", "z" * 5000),
    ]:
        with pytest.raises(AccountError) as err:
            accounts.login(email, password, now=T0)
        failures.append((err.value.reason, str(err.value)))
    assert failures == [(Reason.BAD_CREDENTIALS, "wrong email or password")] * 4


def test_unknown_email_costs_about_one_scrypt_like_a_wrong_password(db: Path) -> None:
    accounts = Accounts(db)  # the real cost, so the hash dominates the time
    accounts.create("a@example.com", PASSWORD, now=T0)

    def median_login_s(email: str) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            with pytest.raises(AccountError):
                accounts.login(email, "wrong password", now=T0)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    known, unknown = median_login_s("a@example.com"), median_login_s("nobody@example.com")
    assert 0.5 < unknown / known < 2, (known, unknown)
    accounts.close()


def test_concurrent_creates_of_one_email_admit_exactly_one(db: Path) -> None:
    # Two instances: two connections to one file, as well as threads sharing one.
    stores = [Accounts(db, scrypt=FAST), Accounts(db, scrypt=FAST)]
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def create(i: int) -> None:
        barrier.wait()
        try:
            stores[i % 2].create("Race@Example.com", PASSWORD, now=T0)
            outcomes.append("created")
        except AccountError as err:
            outcomes.append(err.reason.name)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["EMAIL_TAKEN"] * 7 + ["created"]
    for store in stores:
        store.close()


def test_raised_scrypt_cost_rehashes_on_login(db: Path) -> None:
    old = Accounts(db, scrypt=ScryptParams(n=2**8))
    old.create("a@example.com", PASSWORD, now=T0)
    old.close()
    new = Accounts(db, scrypt=ScryptParams(n=2**9))
    new.login("a@example.com", PASSWORD, now=T0)
    new.close()
    conn = sqlite3.connect(db)
    (stored,) = conn.execute("SELECT password FROM accounts").fetchone()
    conn.close()
    assert stored.startswith("$scrypt$n=512,r=8,p=1$")
    assert verify_password(PASSWORD, stored)


def test_password_hash_format_and_verification() -> None:
    stored = hash_password("pässword", FAST)
    assert stored.startswith("$scrypt$n=1024,r=8,p=1$")
    assert stored != hash_password("pässword", FAST)  # salted
    assert verify_password("pa\u0308ssword", stored)  # same text, other Unicode form
    assert not verify_password("password", stored)


def test_throttle_waits_after_max_failures_until_the_window_passes() -> None:
    throttle = LoginThrottle(max_failures=5, window_s=300)
    for i in range(4):
        throttle.failed("ip:10.0.0.1", T0 + i)
        assert throttle.check("ip:10.0.0.1", T0 + i) == 0
    throttle.failed("ip:10.0.0.1", T0 + 4)
    assert throttle.check("ip:10.0.0.1", T0 + 4) == pytest.approx(296)  # first failure + 300
    assert throttle.check("ip:10.0.0.2", T0 + 4) == 0  # keys are independent
    assert throttle.check("ip:10.0.0.1", T0 + 300) == 0
    throttle.failed("ip:10.0.0.1", T0 + 300)  # the 5 most recent now start at T0 + 1
    assert throttle.check("ip:10.0.0.1", T0 + 300) == pytest.approx(1)


def test_throttle_success_resets() -> None:
    throttle = LoginThrottle(max_failures=2, window_s=60)
    throttle.failed("a@example.com", T0)
    throttle.failed("a@example.com", T0)
    assert throttle.check("a@example.com", T0) > 0
    throttle.succeeded("a@example.com")
    assert throttle.check("a@example.com", T0) == 0
    assert len(throttle) == 0


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(max_failures=3, window_s=60, max_keys=100)
    for i in range(10_000):
        throttle.failed(f"key{i}", T0 + i / 1000)  # all within one window
        assert len(throttle) <= 100
    throttle.failed("last", T0 + 1000)  # everything else has left the window
    assert len(throttle) == 1


def test_entitlement_rule() -> None:
    basic = Account(1, "a@example.com", "basic", T0)
    premium = Account(2, "b@example.com", "premium", T0)
    assert entitled(basic, ["drama"]) and entitled(basic, [])
    assert not entitled(basic, ["drama", "Premium"])
    assert entitled(premium, ["premium"]) and entitled(premium, ["drama"])
    with pytest.raises(TypeError):
        entitled(basic, "premium")
