"""``streamcdn status``: the fleet as the steering service sees it, as a terminal table."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.table import Table

from streamcdn.errors import UserError

TIMEOUT_S = 5
console = Console()  # the table is the command's output: stdout
_STYLE = {"up": "green", "degraded": "yellow", "draining": "cyan", "down": "bold red"}


def fetch_fleet(steering: str) -> dict[str, Any]:
    url = f"{steering.rstrip('/')}/fleet"
    if not url.startswith(("http://", "https://")):
        raise UserError(f"--steering {steering!r}: expected http://host:port")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            data = json.load(r)
    except urllib.error.HTTPError as exc:
        raise UserError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    except ValueError:
        raise UserError(f"{url}: the answer is not JSON; is this a steering service?") from None
    if not isinstance(data, dict) or not isinstance(data.get("appliances"), list):
        raise UserError(f"{url}: the answer has no appliance list; is this a steering service?")
    return data


def _bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def _ratio(figures: dict[str, Any], kind: str) -> str:
    ratios = figures.get(kind)
    if not isinstance(ratios, dict):
        return "-"
    total = sum(v for v in ratios.values() if isinstance(v, int | float))
    return f"{total:.0%}"


def fleet_table(fleet: dict[str, Any], now: float) -> Table:
    """One row per appliance, grouped by site; narrow enough for an 80-column terminal."""
    table = Table(title=f"streamcdn fleet ({fleet.get('store', {}).get('backend', '?')} registry)")
    for name in ("site", "id", "status", "seen", "out Mbps", "cap", "hits", "mem", "disk", "conn"):
        table.add_column(name, justify="left" if name in ("site", "id", "status") else "right")
    rows = sorted(fleet["appliances"], key=lambda a: (str(a.get("site")), str(a.get("id"))))
    for a in rows:
        f = a.get("figures") or {}
        tiers = f.get("tiers") or {}
        seen = a.get("last_seen")
        status = str(a.get("status"))
        table.add_row(
            str(a.get("site")),
            str(a.get("id")),
            f"[{_STYLE.get(status, 'white')}]{status}[/]",
            "never" if seen is None else f"{max(0.0, now - seen):.0f}s",
            f"{a.get('egress_mbps', 0):.0f}",
            _si(a.get("capacity_mbps")),
            _ratio(f, "byte_hit_ratio"),
            *(
                _bytes(t.get("used_bytes")) if isinstance(t := tiers.get(tier), dict) else "-"
                for tier in ("memory", "disk")
            ),
            str(f.get("connections", "-")),
        )
    return table


def _si(n: object) -> str:
    if not isinstance(n, int | float):
        return "-"
    return f"{n / 1000:.0f}k" if n >= 1000 else f"{n:.0f}"


def show_status(steering: str, *, as_json: bool = False) -> None:
    fleet = fetch_fleet(steering)
    if as_json:
        print(json.dumps(fleet, indent=2))
        return
    console.print(fleet_table(fleet, time.time()))
    for a in fleet["appliances"]:
        if a.get("reason"):
            console.print(f"  {a.get('id')}: {a.get('status')}: {a.get('reason')}")
    store = fleet.get("store") or {}
    if not store.get("ok", True):
        console.print(f"[yellow]registry store unreachable: {store.get('error')}[/]")
