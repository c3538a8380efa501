"""Plumbing every streamcdn server shares: uvloop, JSON logs, /health, /metrics, errors,
and graceful shutdown on SIGINT/SIGTERM.

A service builds its app with :func:`create_app`, adds its routes, and hands it to
:func:`run`. Metrics live in a registry per app, so several apps can share one process
(as they do in tests) without clashing.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import math
import signal
import ssl
import sys
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from streamcdn import __version__
from streamcdn.errors import UserError

log = logging.getLogger("streamcdn")

SERVICE = web.AppKey("service", str)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STARTED = web.AppKey("started", float)
HEALTH_CHECKS = web.AppKey("health_checks", list)
# Optional: wraps aiohttp's protocol factory with a service's own front protocol
# (the appliance's fast path for cache hits); called with the factory and the app.
FRONT = web.AppKey("front", object)

SHUTDOWN_TIMEOUT_S = 10.0
# A connection that sends no complete request for this long is closed: this bounds
# idle keep-alive connections and slow-header (slowloris) clients alike.
KEEPALIVE_TIMEOUT_S = 15.0
# Connections the kernel completes before we accept them. asyncio's default (100) overflows
# when ~1,000 players connect at once, and each dropped SYN costs its client a 1 s retry;
# the kernel caps it at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 1024
MAX_REQUEST_BYTES = 1 << 20  # servers that take bodies can raise it per route
# Fields of a LogRecord that are not extra= keys.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any extra= fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log_access(
            self.logger,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
            request.remote,
        )


def log_access(
    logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
    method: str,
    path: str,
    status: int,
    nbytes: int,
    seconds: float,
    remote: str | None,
) -> None:
    """One access-log line (JSON): what aiohttp's access log and a front protocol write."""
    logger.info(
        "request",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "bytes": nbytes,
            "ms": round(seconds * 1000, 2),
            "remote": remote,
        },
    )


class HttpMetrics(Collector):
    """Requests, response bytes and latency by route, counted in plain Python and turned
    into Prometheus samples only when /metrics is scraped.

    prometheus_client's own metric objects take a lock and run several checks per call;
    at tens of thousands of cache hits a second that showed in the profile. The series
    are the ones those objects would give: streamcdn_http_requests_total{route,method,
    status}, streamcdn_http_response_bytes_total{route,status} and the histogram
    streamcdn_http_request_duration_seconds{route}.
    """

    BUCKETS = Histogram.DEFAULT_BUCKETS  # ends with +Inf

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], list[int]] = {}  # -> [requests, bytes]
        self._latency: dict[str, list[float]] = {}  # route -> per-bucket counts, then the sum

    def count(
        self, route: str, method: str, status: int, nbytes: int, seconds: float, requests: int = 1
    ) -> None:
        """Count ``requests`` answers of ``nbytes`` body bytes in all, each ``seconds`` long."""
        counts = self._counts.get((route, method, status))
        if counts is None:
            counts = self._counts[(route, method, status)] = [0, 0]
        counts[0] += requests
        counts[1] += nbytes
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = [0.0] * (len(self.BUCKETS) + 1)
        latency[bisect.bisect_left(self.BUCKETS, seconds)] += requests  # "le": upper bounds
        latency[-1] += seconds * requests

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "streamcdn_http_requests",
            "HTTP requests by route, method and status",
            labels=["route", "method", "status"],
        )
        sent = CounterMetricFamily(
            "streamcdn_http_response_bytes",
            "Response body bytes by route and status",
            labels=["route", "status"],
        )
        by_status: Tally[tuple[str, str]] = Tally()
        for (route, method, status), (n, nbytes) in self._counts.items():
            requests.add_metric([route, method, str(status)], n)
            by_status[(route, str(status))] += nbytes
        for labels, nbytes in by_status.items():
            sent.add_metric(list(labels), nbytes)
        latency = HistogramMetricFamily(
            "streamcdn_http_request_duration_seconds",
            "Time to produce a response, by route",
            labels=["route"],
        )
        for route, counts in self._latency.items():
            cumulative = list(itertools.accumulate(counts[:-1]))
            bounds = map(floatToGoString, self.BUCKETS)
            buckets = list(zip(bounds, cumulative, strict=True))
            latency.add_metric([route], buckets, counts[-1])
        yield from (requests, sent, latency)


_METRICS = web.AppKey("metrics", HttpMetrics)


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def _error_body(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason, "status": status}, status=status)


@web.middleware
async def _plumbing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request, and turn every error into a small JSON body (no tracebacks)."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's default text is "404: Not Found"; a handler's own text is the reason.
        default = not exc.text or exc.text.startswith(f"{exc.status}: ")
        response = _error_body(exc.status, (exc.reason if default else exc.text) or "")
        for header in ("Retry-After", "Allow", "X-Not-Found", "WWW-Authenticate"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        response = _error_body(500, "internal error")
    count_request(
        request.app,
        _route_label(request),
        request.method,
        response.status,
        response.body_length or response.content_length or 0,
        time.perf_counter() - started,
    )
    return response


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a double")
    return value


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


async def json_body(request: web.Request, *, what: str = "the body") -> Any:
    """The request's body parsed as JSON; 400 (never a 500) for anything that is not JSON,
    including nesting deep enough to exhaust the parser's recursion, and NaN, Infinity or
    a number past a double (Python reads them; RFC 8259 section 6 has no such numbers,
    and echoed back in /fleet they would break every browser's JSON.parse). Over the
    app's client_max_size, aiohttp answers 413 first."""
    body = await request.read()
    try:
        return json.loads(body, parse_float=_finite, parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise web.HTTPBadRequest(text=f"{what} is not JSON") from None


def count_request(
    app: web.Application,
    route: str,
    method: str,
    status: int,
    nbytes: int,
    seconds: float,
    requests: int = 1,
) -> None:
    """Count answered requests in /metrics (the middleware does it for aiohttp routes):
    ``requests`` of them, each ``seconds`` long, ``nbytes`` of body in all."""
    app[_METRICS].count(route, method, status, nbytes, seconds, requests)


async def _health(request: web.Request) -> web.Response:
    body: dict[str, Any] = {
        "status": "ok",
        "service": request.app[SERVICE],
        "version": __version__,
        "uptime_s": round(time.monotonic() - request.app[STARTED], 3),
    }
    for check in request.app[HEALTH_CHECKS]:
        body.update(check())
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[REGISTRY])
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(service: str, *, client_max_size: int = MAX_REQUEST_BYTES) -> web.Application:
    """An app with the shared middleware and /health and /metrics already routed."""
    app = web.Application(middlewares=[_plumbing], client_max_size=client_max_size)
    registry = CollectorRegistry()
    app[SERVICE] = service
    app[REGISTRY] = registry
    app[STARTED] = time.monotonic()
    app[HEALTH_CHECKS] = []
    app[_METRICS] = HttpMetrics()
    registry.register(app[_METRICS])
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


class Running:
    """A started app: where it listens, and how to stop it."""

    def __init__(self, app: web.Application, runner: web.AppRunner, server: asyncio.Server):
        self.app = app
        self._runner = runner
        self._server = server
        self.host, self.port = server.sockets[0].getsockname()[:2]
        self._closed = False

    def make_url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def close(self) -> None:
        """Stop listening, let in-flight requests finish (up to SHUTDOWN_TIMEOUT_S), clean up."""
        if self._closed:
            return
        self._closed = True
        self._server.close()
        front = self.app.get(FRONT)
        if front is not None:
            await front.shutdown(SHUTDOWN_TIMEOUT_S)  # type: ignore[attr-defined]
        await self._runner.cleanup()


async def start(
    app: web.Application,
    *,
    host: str,
    port: int,
    access_log: bool = True,
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
) -> Running:
    """Serve ``app`` on ``host:port`` in the running loop (port 0: any free port)."""
    access_logger = logging.getLogger(f"streamcdn.{app[SERVICE]}.access") if access_log else None
    runner = web.AppRunner(
        app,
        access_log_class=JsonAccessLogger,
        access_log=access_logger,
        keepalive_timeout=keepalive_timeout_s,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    factory: Callable[[], asyncio.BaseProtocol] = runner.server  # type: ignore[assignment]
    front = app.get(FRONT)
    if front is not None:
        factory = front.wrap(runner.server, access_logger, keepalive_timeout_s)  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            factory, host, port, reuse_address=True, backlog=LISTEN_BACKLOG, ssl=ssl_context
        )
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        await runner.cleanup()
        raise
    return Running(app, runner, server)


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    access_log: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` on uvloop until SIGINT/SIGTERM, then drain in-flight requests.

    Without the access log every request is still counted in /metrics.
    """
    setup_logging()
    uvloop.run(_serve_until_signal(app, host, port, access_log, ssl_context))
    log.info("stopped", extra={"service": app[SERVICE]})


async def _serve_until_signal(
    app: web.Application,
    host: str,
    port: int,
    access_log: bool,
    ssl_context: ssl.SSLContext | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start(app, host=host, port=port, access_log=access_log, ssl_context=ssl_context)
    log.info("listening", extra={"service": app[SERVICE], "host": host, "port": running.port})
    await stop.wait()
    log.info("stopping", extra={"service": app[SERVICE]})
    await running.close()
