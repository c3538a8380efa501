"""Plumbing every streamcdn server shares: uvloop, JSON logs, /health, /metrics, errors,
and graceful shutdown on SIGINT/SIGTERM.

A service builds its app with :func:`create_app`, adds its routes, and hands it to
:func:`run`. Metrics live in a registry per app, so several apps can share one process
(as they do in tests) without clashing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from streamcdn import __version__

log = logging.getLogger("streamcdn")

SERVICE = web.AppKey("service", str)
REGISTRY = web.AppKey("registry", CollectorRegistry)
STARTED = web.AppKey("started", float)
HEALTH_CHECKS = web.AppKey("health_checks", list)
_METRICS = web.AppKey("metrics", dict)

SHUTDOWN_TIMEOUT_S = 10.0
# A connection that sends no complete request for this long is closed: this bounds
# idle keep-alive connections and slow-header (slowloris) clients alike.
KEEPALIVE_TIMEOUT_S = 15.0
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
        self.logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "bytes": response.body_length,
                "ms": round(time * 1000, 2),
                "remote": request.remote,
            },
        )


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def _error_body(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason, "status": status}, status=status)


@web.middleware
async def _plumbing(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request, and turn every error into a small JSON body (no tracebacks)."""
    metrics = request.app[_METRICS]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's default text is "404: Not Found"; a handler's own text is the reason.
        default = not exc.text or exc.text.startswith(f"{exc.status}: ")
        response = _error_body(exc.status, exc.reason if default else exc.text)
        for header in ("Retry-After", "Allow", "X-Not-Found"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        response = _error_body(500, "internal error")
    route, status = _route_label(request), str(response.status)
    # One child per label set, looked up once: labels() costs more than the increment.
    key = (route, request.method, status)
    children = metrics["children"].get(key)
    if children is None:
        children = metrics["children"][key] = (
            metrics["requests"].labels(route, request.method, status),
            metrics["latency"].labels(route),
            metrics["bytes"].labels(route, status),
        )
    requests, latency, sent = children
    requests.inc()
    latency.observe(time.perf_counter() - started)
    sent.inc(response.body_length or response.content_length or 0)
    return response


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
    app[_METRICS] = {
        "children": {},
        "requests": Counter(
            "streamcdn_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        ),
        "bytes": Counter(
            "streamcdn_http_response_bytes",
            "Response body bytes by route and status",
            ["route", "status"],
            registry=registry,
        ),
        "latency": Histogram(
            "streamcdn_http_request_duration_seconds",
            "Time to produce a response, by route",
            ["route"],
            registry=registry,
        ),
    }
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


def run(app: web.Application, *, host: str, port: int, access_log: bool = True) -> None:
    """Serve ``app`` on uvloop until SIGINT/SIGTERM, then drain in-flight requests.

    Without the access log every request is still counted in /metrics.
    """
    setup_logging()
    log.info("listening", extra={"service": app[SERVICE], "host": host, "port": port})
    web.run_app(
        app,
        host=host,
        port=port,
        loop=uvloop.new_event_loop(),
        access_log_class=JsonAccessLogger,
        access_log=logging.getLogger(f"streamcdn.{app[SERVICE]}.access") if access_log else None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        print=None,
        handle_signals=True,
    )
    log.info("stopped", extra={"service": app[SERVICE]})
