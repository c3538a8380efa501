"""The fleet registry: the appliances' last heartbeats, and what they say about each one.

Appliances post their health every second (appliance/heartbeat.py). A store keeps the
newest heartbeat per appliance: :class:`MemoryStore` in the steering process, or
:class:`RedisStore`, so that several steering replicas share one view. Everything
else is derived, purely, from those heartbeats, the deployment file and the time:
whether an appliance is up, degraded, draining or down and why, and its figures
(:func:`fleet_view`). An appliance that misses ``down_after_missed`` heartbeats is
down, with the time it was last seen; nothing has to be written for that to happen,
so replicas cannot disagree about it.

Redis layout: one hash per appliance, ``{prefix}{id}`` with ``sent_at``, ``seen_at``
and ``body`` (the heartbeat's JSON). A write goes through a Lua script that keeps the
stored heartbeat unless the new one was sent later, so two replicas writing at once
cannot put an older heartbeat over a newer one (no lost update, whatever the order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from steering.ranking import ApplianceState
from streamcdn.config import Deployment

STATUSES = ("up", "degraded", "draining", "down")


@dataclass(frozen=True)
class Heartbeat:
    id: str
    sent_at: float  # the appliance's clock, unix seconds
    seen_at: float  # steering's clock when it arrived
    body: Mapping[str, Any]  # the appliance's /health figures


class FleetStore(Protocol):
    """Where heartbeats live. ``put`` keeps only the newest per appliance."""

    async def put(self, beat: Heartbeat) -> bool: ...  # False: an older one, ignored

    async def all(self) -> dict[str, Heartbeat]: ...

    async def close(self) -> None: ...


class MemoryStore:
    """One steering process's own view."""

    def __init__(self) -> None:
        self._beats: dict[str, Heartbeat] = {}

    async def put(self, beat: Heartbeat) -> bool:
        old = self._beats.get(beat.id)
        if old is not None and old.sent_at >= beat.sent_at:
            return False
        self._beats[beat.id] = beat
        return True

    async def all(self) -> dict[str, Heartbeat]:
        return dict(self._beats)

    async def close(self) -> None:
        pass


# KEYS[1] the appliance's hash; ARGV sent_at, seen_at, body, ttl seconds.
_PUT_NEWER = """
local old = redis.call('HGET', KEYS[1], 'sent_at')
if old and tonumber(old) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'sent_at', ARGV[1], 'seen_at', ARGV[2], 'body', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisStore:
    """Heartbeats in Redis, shared by every steering replica that points at it."""

    def __init__(self, url: str, *, prefix: str = "streamcdn:fleet:", ttl_s: int = 86400):
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True
        )
        self._prefix = prefix
        self._ttl_s = ttl_s  # an appliance gone this long is forgotten
        self._put = self._redis.register_script(_PUT_NEWER)

    async def put(self, beat: Heartbeat) -> bool:
        body = json.dumps(beat.body, separators=(",", ":"))
        args: list[str | int] = [repr(beat.sent_at), repr(beat.seen_at), body, self._ttl_s]
        return bool(await self._put(keys=[self._prefix + beat.id], args=args))

    async def all(self) -> dict[str, Heartbeat]:
        keys = [k async for k in self._redis.scan_iter(match=self._prefix + "*", count=500)]
        if not keys:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            rows = await pipe.execute()
        beats = {}
        for key, row in zip(keys, rows, strict=True):
            try:
                beat = Heartbeat(
                    key.removeprefix(self._prefix),
                    float(row["sent_at"]),
                    float(row["seen_at"]),
                    json.loads(row["body"]),
                )
            except (KeyError, ValueError, TypeError):
                continue  # expired between SCAN and HGETALL, or not ours
            beats[beat.id] = beat
        return beats

    async def close(self) -> None:
        await self._redis.aclose()


# -- what the heartbeats say ---------------------------------------------------------


@dataclass(frozen=True)
class ApplianceView:
    """One appliance as the dashboard and ranking see it."""

    id: str
    url: str
    site: str
    capacity_mbps: float
    status: str  # one of STATUSES
    reason: str  # why, when not up
    last_seen: float | None  # unix seconds of the last heartbeat, if any
    figures: Mapping[str, Any]  # the last heartbeat's health figures

    @property
    def egress_mbps(self) -> float:
        return _number(self.figures.get("egress_bps")) / 1e6

    @property
    def shedding(self) -> bool:
        limiter = self.figures.get("limiter")
        return isinstance(limiter, dict) and bool(limiter.get("shedding"))

    def state(self) -> ApplianceState:
        """What ranking needs. Draining appliances take no new viewers."""
        return ApplianceState(
            id=self.id,
            url=self.url,
            site=self.site,
            capacity_mbps=self.capacity_mbps,
            up=self.status in ("up", "degraded"),
            egress_mbps=self.egress_mbps,
            shedding=self.shedding,
        )

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "site": self.site,
            "capacity_mbps": self.capacity_mbps,
            "status": self.status,
            "reason": self.reason,
            "last_seen": self.last_seen,
            "seen_ago_s": None if self.last_seen is None else round(now - self.last_seen, 3),
            "egress_mbps": round(self.egress_mbps, 3),
            "shedding": self.shedding,
            "figures": dict(self.figures),
        }


def status_of(
    beat: Heartbeat | None, now: float, *, interval_s: float, missed: int
) -> tuple[str, str]:
    """(status, reason) from the last heartbeat and the time."""
    if beat is None:
        return "down", "no heartbeat yet"
    silent_s = now - beat.seen_at
    if silent_s > interval_s * missed:
        return "down", f"missed {missed} heartbeats: silent for {silent_s:.1f} s"
    reported = beat.body.get("status")
    reasons = beat.body.get("reasons")
    why = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""
    if reported in ("degraded", "draining"):
        return str(reported), why or str(reported)
    return "up", ""


def fleet_view(
    deployment: Deployment, beats: Mapping[str, Heartbeat], now: float
) -> list[ApplianceView]:
    """Every configured appliance, in the deployment file's order."""
    views = []
    for entry in deployment.appliances:
        beat = beats.get(entry.id)
        status, reason = status_of(
            beat,
            now,
            interval_s=deployment.heartbeat_interval_s,
            missed=deployment.down_after_missed,
        )
        views.append(
            ApplianceView(
                id=entry.id,
                url=entry.url,
                site=entry.site,
                capacity_mbps=entry.capacity_mbps,
                status=status,
                reason=reason,
                last_seen=beat.seen_at if beat else None,
                figures=beat.body if beat else {},
            )
        )
    return views


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer past a double (JSON allows it)
            return 0.0
        if math.isfinite(number):
            return number
    return 0.0
