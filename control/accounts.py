"""Accounts, password logins, bearer sessions, entitlement and login throttling.

``Accounts`` is a blocking, thread-safe store over the control service's SQLite file
(the server calls it through ``asyncio.to_thread``). Nothing here reads a clock:
every time-dependent method takes ``now`` in unix seconds.

- Passwords are hashed with scrypt (RFC 7914) and stored as
  ``$scrypt$n=16384,r=8,p=1$<salt>$<key>`` (base64), so the cost can be raised later:
  a login with the old parameters rehashes the password with the configured ones.
- Session tokens are ``secrets.token_urlsafe(32)``; only their SHA-256 is stored, so a
  copy of the database holds no usable token, and a lookup by hash leaks nothing
  useful through timing.
- A login with an unknown email runs scrypt against a dummy hash, so it costs about as
  much as one with a wrong password, and both fail with the same error.

Schema: the tables below, created if missing; their version is the ``accounts`` row
of the ``schema_versions`` table, which the catalog shares (``PRAGMA user_version``
is one number per file, and the two modules share one file).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import sqlite3
import threading
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,  -- normalised: NFC, lower-case
    password TEXT NOT NULL,      -- $scrypt$n=..,r=..,p=..$salt$key
    plan TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 BLOB PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);
"""

DEFAULT_SESSION_TTL_S = 24 * 3600
BUSY_TIMEOUT_MS = 5000
PLANS = ("basic", "premium")
PREMIUM_TAG = "premium"  # titles with this tag need the premium plan
MAX_EMAIL_LEN = 254  # RFC 5321 path limit, less the angle brackets
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 1024  # characters; scrypt's cost grows with the password's length
MAX_TOKEN_LEN = 200  # real tokens are 43 characters
SALT_BYTES = 16
KEY_BYTES = 32


class Reason(enum.Enum):
    INVALID_EMAIL = "invalid email address"
    WEAK_PASSWORD = f"password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters long"
    EMAIL_TAKEN = "an account with this email already exists"
    INVALID_PLAN = f"plan must be one of {', '.join(PLANS)}"
    # The same words for an unknown email and a wrong password: no account enumeration.
    BAD_CREDENTIALS = "wrong email or password"


class AccountError(Exception):
    """A refused account operation; ``reason`` says which, ``str(err)`` says it to a user."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True)
class Account:
    id: int
    email: str
    plan: str
    created_at: float  # unix seconds


@dataclass(frozen=True)
class Session:
    token: str  # the bearer token; shown to the client once, stored only as its SHA-256
    account_id: int
    expires_at: float  # unix seconds


@dataclass(frozen=True)
class ScryptParams:
    n: int = 2**14  # CPU/memory cost; 128 * n * r bytes = 16 MiB, 40-65 ms on one core
    r: int = 8  # block size
    p: int = 1  # parallelism

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of two > 1, not {self.n}")
        if self.r < 1 or self.p < 1:
            raise ValueError(f"scrypt r and p must be >= 1, not r={self.r} p={self.p}")


def entitled(account: Account, tags: Collection[str]) -> bool:
    """Whether ``account`` may play a title with these tags.

    The rule: a title tagged ``premium`` needs the premium plan; every other title is
    open to every account.
    """
    if isinstance(tags, str):
        raise TypeError("tags must be a collection of tags, not one string")
    if PREMIUM_TAG in (tag.strip().lower() for tag in tags):
        return account.plan == "premium"
    return True


def normalise_email(email: str) -> str:
    """The canonical form of an address: stripped, NFC, lower-case; else INVALID_EMAIL.

    The whole address is lower-cased, not only the domain: local parts are
    case-insensitive at every large provider, and one account per spelling would
    let look-alike accounts exist.
    """
    email = unicodedata.normalize("NFC", email.strip()).lower()
    local, at, domain = email.rpartition("@")
    valid = (
        at
        and local
        and domain
        and len(email) <= MAX_EMAIL_LEN
        and "@" not in local
        and " " not in email
        and email.isprintable()  # no controls, format marks (RTL, zero-width) or line breaks
        and all(domain.split("."))  # no empty labels
    )
    if not valid:
        raise AccountError(Reason.INVALID_EMAIL)
    return email


def hash_password(password: str, params: ScryptParams) -> str:
    """A fresh salted scrypt hash of ``password`` with its parameters, as one string."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, params, KEY_BYTES)
    return f"$scrypt$n={params.n},r={params.r},p={params.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (from ``hash_password``), in constant time."""
    params, salt, key = _parse_hash(stored)
    return hmac.compare_digest(_scrypt(password, salt, params, len(key)), key)


def _scrypt(password: str, salt: bytes, params: ScryptParams, dklen: int) -> bytes:
    # NFC so the same password typed on two keyboards hashes the same (RFC 8265 §4.2).
    secret = unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")
    # OpenSSL's default maxmem (32 MiB) would cap the cost; allow what these parameters
    # need: 128*r*(n+2) bytes for V and 128*r*p for B (RFC 7914 §5).
    maxmem = 128 * params.r * (params.n + 2 + params.p) + 1024
    return hashlib.scrypt(
        secret, salt=salt, n=params.n, r=params.r, p=params.p, maxmem=maxmem, dklen=dklen
    )


def _parse_hash(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    empty, scheme, settings, salt, key = stored.split("$")
    if empty or scheme != "scrypt":
        raise ValueError(f"not a scrypt hash: {stored[:16]!r}")
    values = dict(item.split("=") for item in settings.split(","))
    params = ScryptParams(n=int(values["n"]), r=int(values["r"]), p=int(values["p"]))
    return params, _unb64(salt), _unb64(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


class LoginThrottle:
    """Slows password guessing: after ``max_failures`` failed logins within ``window_s``
    for one key (the server keys by email and by client IP), that key waits until the
    oldest of those failures leaves the window. A success clears the key.

    In memory and bounded: keys whose last failure has left the window are dropped, and
    past ``max_keys`` the least recently failed key goes first. (A flood of fresh keys
    can so shorten an old key's throttle; the cap is set far above honest traffic.)
    Pure and thread-safe: the caller passes ``now``.
    """

    def __init__(
        self, max_failures: int = 5, window_s: float = 300, *, max_keys: int = 100_000
    ) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, not {max_failures}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, not {window_s}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys}")
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        # key -> its last failure times, oldest first; least recently failed key first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def check(self, key: str, now: float) -> float:
        """Seconds ``key`` must wait before its next attempt; 0 if it may try now."""
        with self._lock:
            times = self._failures.get(key)
            if times is None or len(times) < self.max_failures:
                return 0.0
            return max(0.0, times[0] + self.window_s - now)

    def failed(self, key: str, now: float) -> None:
        with self._lock:
            times = self._failures.setdefault(key, deque(maxlen=self.max_failures))
            times.append(now)
            self._failures.move_to_end(key)
            self._prune(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        while self._failures:
            oldest = self._failures[next(iter(self._failures))]
            if oldest[-1] + self.window_s > now and len(self._failures) <= self.max_keys:
                return
            self._failures.popitem(last=False)


class Accounts:
    """Accounts and sessions in the SQLite file ``db_path``; safe to call from many threads.

    One connection, serialised by a lock; scrypt runs outside the lock so slow hashes
    do not queue every other request behind them.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        scrypt: ScryptParams = ScryptParams(),  # frozen: one shared default is safe
    ) -> None:
        if not session_ttl_s > 0:
            raise ValueError(f"session_ttl_s must be > 0, not {session_ttl_s}")
        self.session_ttl_s = session_ttl_s
        self.scrypt = scrypt
        # What an unknown email is checked against, so it costs one scrypt like a real one.
        self._dummy_hash = hash_password(secrets.token_urlsafe(16), scrypt)
        self._lock = threading.Lock()
        self._conn = connect(db_path, "accounts", SCHEMA_VERSION, SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(self, email: str, password: str, *, plan: str = "basic", now: float) -> Account:
        """A new account; AccountError INVALID_EMAIL, WEAK_PASSWORD, INVALID_PLAN or
        EMAIL_TAKEN (the UNIQUE constraint decides, so two racing creates cannot both win)."""
        email = normalise_email(email)
        if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
            raise AccountError(Reason.WEAK_PASSWORD)
        if plan not in PLANS:
            raise AccountError(Reason.INVALID_PLAN)
        stored = hash_password(password, self.scrypt)
        try:
            with self._write() as conn:
                cur = conn.execute(
                    "INSERT INTO accounts (email, password, plan, created_at) VALUES (?, ?, ?, ?)",
                    (email, stored, plan, now),
                )
        except sqlite3.IntegrityError as err:
            if "accounts.email" in str(err):
                raise AccountError(Reason.EMAIL_TAKEN) from None
            raise
        assert cur.lastrowid is not None
        return Account(cur.lastrowid, email, plan, float(now))

    def login(self, email: str, password: str, *, now: float) -> Session:
        """A new session for the account; AccountError BAD_CREDENTIALS for an unknown
        email or a wrong password alike, in about the same time. Throttling guesses is
        the caller's part (LoginThrottle)."""
        if len(password) > MAX_PASSWORD_LEN:  # costs depend on the input only: no leak
            raise AccountError(Reason.BAD_CREDENTIALS)
        try:
            email = normalise_email(email)
        except AccountError:
            email = ""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, password FROM accounts WHERE email = ?", (email,)
            ).fetchone()
        account_id, stored = row if row else (None, self._dummy_hash)
        if not verify_password(password, stored) or account_id is None:
            raise AccountError(Reason.BAD_CREDENTIALS)
        if _parse_hash(stored)[0] != self.scrypt:  # the cost was raised since: rehash
            rehashed = hash_password(password, self.scrypt)
            with self._write() as conn:
                conn.execute(
                    "UPDATE accounts SET password = ? WHERE id = ? AND password = ?",
                    (rehashed, account_id, stored),
                )
        token = secrets.token_urlsafe(32)
        expires_at = float(now + self.session_ttl_s)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sessions (token_sha256, account_id, expires_at) VALUES (?, ?, ?)",
                (_token_hash(token), account_id, expires_at),
            )
        return Session(token, account_id, expires_at)

    def authenticate(self, token: str, *, now: float) -> Account | None:
        """The account a live session token belongs to; None if unknown, expired or malformed."""
        if not token or len(token) > MAX_TOKEN_LEN or not token.isascii():
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT a.id, a.email, a.plan, a.created_at"
                " FROM sessions s JOIN accounts a ON a.id = s.account_id"
                " WHERE s.token_sha256 = ? AND s.expires_at > ?",
                (_token_hash(token), now),
            ).fetchone()
        return Account(*row) if row else None

    def logout(self, token: str) -> bool:
        """End the session; whether there was one."""
        if not token or len(token) > MAX_TOKEN_LEN or not token.isascii():
            return False
        with self._write() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_token_hash(token),))
        return cur.rowcount > 0

    def purge_expired(self, now: float) -> int:
        """Delete sessions expired by ``now``; how many."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        return cur.rowcount

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._conn) as conn:
            yield conn


# The database plumbing the catalog shares; it belongs in its own module (control/db.py).


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error; the caller holds the lock.

    IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so a
    transaction never fails half-way because another connection writes.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(db_path: Path, module: str, version: int, schema: str) -> sqlite3.Connection:
    """A connection usable from any thread, in WAL mode, with ``schema`` created if missing.

    ``schema`` is plain DDL (no ``;`` in comments or strings). Its ``version`` is
    recorded as ``module``'s row in ``schema_versions``; a different recorded version
    (a file from other code) is an error rather than a silent mix.
    """
    conn = sqlite3.connect(
        db_path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode
        conn.execute("PRAGMA foreign_keys = ON")
        with transaction(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions"
                " (module TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
            conn.execute("INSERT OR IGNORE INTO schema_versions VALUES (?, ?)", (module, version))
            (found,) = conn.execute(
                "SELECT version FROM schema_versions WHERE module = ?", (module,)
            ).fetchone()
            if found != version:
                raise RuntimeError(
                    f"{db_path}: {module} schema is version {found}; this code knows {version}"
                )
            for statement in schema.split(";"):
                if statement.strip():
                    conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn
