"""Answering "play title X": where from (steering, or a static ranking when it is down),
signed URLs, and the per-session master playlist with one pathway per appliance.

A play session lives in control's SQLite file (``play_sessions``): its title, the ranked
appliances it was given, and its expiry, so ``GET /sessions/{session}/master.m3u8``
can be answered by any control process sharing the file, and the steering server needs
no per-session state (the pathways ride in the steering URI's query).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from steering.content_steering import Pathway, session_master
from steering.ranking import ApplianceState, RankingIndex, Site, SiteMap
from streamcdn.breaker import CircuitBreaker
from streamcdn.config import Deployment
from streamcdn.tokens import sign, title_prefix

STEERING_TIMEOUT_S = 0.5  # a play must not wait long on steering: the fallback is good
MAX_APPLIANCES = 5  # pathways per session
MASTER_CACHE_S = 30.0  # the origin's master playlist per title


@dataclass(frozen=True)
class Placement:
    """Where a viewer is sent, best first, and who decided."""

    appliances: tuple[tuple[str, str], ...]  # (id, url)
    source: str  # "steering" or "static" (steering down, slow or circuit-broken)


class Steerer:
    """Asks steering for ranked appliances; falls back to a static ranking from the
    deployment file (every appliance assumed up) when steering fails or is slow."""

    def __init__(self, deployment: Deployment, session: aiohttp.ClientSession) -> None:
        self.url = deployment.steering_url
        self.session = session
        self.breaker = CircuitBreaker()
        sites = [Site(s.name, s.cidrs, s.fallbacks) for s in deployment.sites]
        self.site_map = SiteMap(sites, deployment.default_site) if sites else None
        everyone = [
            ApplianceState(a.id, a.url, a.site, a.capacity_mbps) for a in deployment.appliances
        ]
        self.static = RankingIndex({s.name: s for s in sites}, everyone)

    async def place(self, title: str, client_ip: str, n: int = MAX_APPLIANCES) -> Placement:
        now = time.monotonic()
        if self.url and self.breaker.allow(now):
            query = urllib.parse.urlencode({"title": title, "client_ip": client_ip, "n": n})
            try:
                async with asyncio.timeout(STEERING_TIMEOUT_S):
                    async with self.session.get(f"{self.url}/steer?{query}") as r:
                        if r.status != 200:
                            raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
                        body = await r.json()
                ranked = tuple((a["id"], a["url"]) for a in body["appliances"])
                self.breaker.record_success(time.monotonic())
                if ranked:
                    return Placement(ranked, "steering")
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                self.breaker.record_failure(time.monotonic())
        return self.static_placement(title, client_ip, n)

    def static_placement(self, title: str, client_ip: str, n: int) -> Placement:
        site = self.site_map.site_for(client_ip) if self.site_map else ""
        ranked = self.static.rank(title, site, n).appliances
        return Placement(tuple((a.id, a.url) for a in ranked), "static")


@dataclass(frozen=True)
class PlaySession:
    id: str
    account_id: int
    title: str
    appliances: tuple[tuple[str, str], ...]  # (id, url), best first
    client_ip: str
    expires_at: float


class PlaySessions:
    """Play sessions in control's SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS play_sessions (id TEXT PRIMARY KEY, account_id INTEGER,"
            " title TEXT, appliances TEXT, client_ip TEXT, expires_at REAL)"
        )
        self._lock = threading.Lock()

    def create(
        self, account_id: int, title: str, placement: Placement, client_ip: str, expires_at: float
    ) -> PlaySession:
        session = PlaySession(
            secrets.token_urlsafe(18),
            account_id,
            title,
            placement.appliances,
            client_ip,
            expires_at,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO play_sessions VALUES (?, ?, ?, ?, ?, ?)",
                (session.id, account_id, title, json.dumps(session.appliances), client_ip,
                 expires_at),
            )  # fmt: skip
        return session

    def get(self, session_id: str, *, now: float) -> PlaySession | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, account_id, title, appliances, client_ip, expires_at"
                " FROM play_sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None or row[5] <= now:
            return None
        appliances = tuple((a, u) for a, u in json.loads(row[3]))
        return PlaySession(row[0], row[1], row[2], appliances, row[4], row[5])

    def purge_expired(self, now: float) -> int:
        with self._lock:
            return self._db.execute(
                "DELETE FROM play_sessions WHERE expires_at <= ?", (now,)
            ).rowcount

    def close(self) -> None:
        self._db.close()


def signed_base(deployment: Deployment, url: str, title: str, expires_at: float) -> str:
    """``{appliance}/s/{token}/titles/{title}/``: the prefix of every URL of the title."""
    token = sign(title_prefix(title), deployment.signing_keys[0], expires=int(expires_at))
    return f"{url}/s/{token}/titles/{title}/"


def steering_uri(deployment: Deployment, session: PlaySession) -> str:
    """The session's HLS Content Steering server URI (steering keeps no session state)."""
    query = urllib.parse.urlencode(
        {"title": session.title, "pathways": ",".join(a for a, _ in session.appliances)},
        safe=",",
    )
    return f"{deployment.steering_url}/content-steering/{session.id}.json?{query}"


def build_session_master(deployment: Deployment, master: str, session: PlaySession) -> str:
    """The title's master, one pathway per appliance of the session (HLS Content Steering)."""
    pathways = [
        Pathway(appliance, signed_base(deployment, url, session.title, session.expires_at))
        for appliance, url in session.appliances
    ]
    return session_master(master, pathways, steering_uri=steering_uri(deployment, session))


class MasterCache:
    """The origin's master playlist per title, kept briefly (titles change only on re-ingest)."""

    def __init__(self, origin: str, session: aiohttp.ClientSession) -> None:
        self.origin = origin
        self.session = session
        self._cache: dict[str, tuple[float, str]] = {}

    async def get(self, title: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get(title)
        if hit is not None and now - hit[0] < MASTER_CACHE_S:
            return hit[1]
        async with self.session.get(f"{self.origin}/titles/{title}/master.m3u8") as r:
            if r.status == 404:
                return None
            r.raise_for_status()
            text = await r.text()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[title] = (now, text)
        return text
