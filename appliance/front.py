"""The appliance's front door: cache hits answered on the socket, everything else by aiohttp.

Every connection starts with :class:`FrontProtocol`. It reads plain HTTP/1.1 ``GET`` and
``HEAD`` requests for objects (``/s/{token}/titles/...`` and, when allowed,
``/titles/...``) and answers those that are hits, from the memory tier with one write,
from the disk tier with ``os.sendfile``, pipelined requests in order. The first request
that is anything else (a miss, an admin or health route, a bad token, an odd header,
HTTP/1.0, a body, percent-encoding) hands the connection over to aiohttp, with the bytes
read so far, and the connection stays with aiohttp from then on. So every error and
every rare case has one implementation, aiohttp's and the appliance's handlers, and
the fast path only has to be right for the common case it accepts.

Why: a 1 KB playlist hit through aiohttp's request machinery costs about 3x nginx's
per-request CPU; here it costs a parse of a few header lines and one write
(bench/serve.py, bench/README.md). The answer is the same either way: status, headers
and body come from :meth:`Appliance.find_hit`, which both paths use.

The rules aiohttp applies to its connections apply here too: a connection that sends
no complete request for ``KEEPALIVE_TIMEOUT_S`` is closed, a request head over
``MAX_HEAD_BYTES`` goes to aiohttp (which answers 431/400), a client that stops
reading is dropped after ``SEND_STALL_S``, and shutdown lets answers in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from appliance.sendfile import SEND_STALL_S, send_deadline_s, writable
from streamcdn import service
from streamcdn.ids import is_valid_rel_path, is_valid_title_id
from streamcdn.tokens import TokenError, verify

if TYPE_CHECKING:
    from aiohttp import web

    from appliance.server import Appliance, Hit

log = logging.getLogger("streamcdn.appliance")

MAX_HEAD_BYTES = 8190  # aiohttp's own limit for a request line or a header field
_TARGET = re.compile(
    rb"/(?:s/([A-Za-z0-9_-]{1,1024})/)?titles/([A-Za-z0-9][A-Za-z0-9._-]{0,63})/([A-Za-z0-9._/-]{1,512})"
)
# What the turn budget (Front.over_budget) refuses from its request line alone: a GET or
# HEAD of an object over HTTP/1.1 with none of the _QUICK_VETO headers, which would change
# the 503 (Connection: close) or where the request ends (a body), not even folded (a blank
# before the name), and with CRLF line ends only: a reader in front of the appliance that
# ends lines at a bare CR or LF could see a body header there, and the body would be read
# here as the next request. The veto starts with the literal CRLF, so the regex engine
# jumps from line to line; with the CR and LF counts, 2.1 us for a 400-byte browser head.
_QUICK_LINE = re.compile(rb"(GET|HEAD) /(s|titles)/[!-~]* HTTP/1\.1")
_QUICK_VETO = re.compile(
    rb"\r\n[ \t]*(?:connection[ \t]*:[^\r\n]*close"
    rb"|(?:content-length|transfer-encoding|expect|upgrade)[ \t]*:)",
    re.IGNORECASE,
)
_TOKEN_CHARS = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the fast path reads; a second copy of any of these, or any header in
# _HAND_OVER, sends the request to aiohttp.
_READ = {b"range": "Range", b"if-none-match": "If-None-Match", b"if-range": "If-Range"}
_SINGLE = {b"host", b"connection", b"authorization", *_READ}
_HAND_OVER = {b"content-length", b"transfer-encoding", b"expect", b"upgrade"}
_REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 416: "Range Not Satisfiable"}
SHED_BODY = b"overloaded; retry"  # the same 503 as the slow path's (Appliance.serve)
_ROUTES = {True: "/s/{token}/titles/{title}/{path}", False: "/titles/{title}/{path}"}
JOIN_BELOW_BYTES = 64 * 1024  # smaller bodies leave in the same write as the head
# Answers a loop turn always gives before its time budget (Front.over_budget) applies.
TURN_MIN_ANSWERS = 32


class Request:
    __slots__ = ("auth", "close", "head_len", "headers", "method", "target")

    def __init__(self, method: str, target: bytes, headers: dict[str, str], close: bool,
                 auth: str | None, head_len: int) -> None:  # fmt: skip
        self.method = method
        self.target = target
        self.headers = headers  # only the ones in _READ, under their canonical names
        self.close = close
        self.auth = auth
        self.head_len = head_len  # bytes of the request, blank line included


def parse_head(buf: bytes | bytearray, end: int) -> Request | None:
    """The request whose head is ``buf[:end]`` (``end`` is where its blank line starts), if
    the fast path may answer it; None hands it to aiohttp."""
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
        return None
    headers: dict[str, str] = {}
    seen: set[bytes] = set()
    close = False
    auth = None
    for line in lines[1:]:
        name, sep, raw = line.partition(b":")
        if not sep or not _TOKEN_CHARS.fullmatch(name) or _BAD_VALUE.search(raw):
            return None  # also obsolete line folding: the name would start with a space
        lower = name.lower()
        if lower in _HAND_OVER:
            return None
        if lower in _SINGLE:
            if lower in seen:
                return None
            seen.add(lower)
        value = raw.strip(b" \t").decode("latin-1")
        if lower in _READ:
            headers[_READ[lower]] = value
        elif lower == b"connection":
            tokens = {t.strip(" \t").lower() for t in value.split(",")}  # OWS, not Unicode
            if not tokens <= {"close", "keep-alive"}:
                return None
            close = "close" in tokens
        elif lower == b"authorization":
            auth = value
    if b"host" not in seen:
        return None  # RFC 9112 3.2: a 400, which aiohttp's path gives
    return Request(parts[0].decode(), parts[1], headers, close, auth, end + 4)


def object_target(target: bytes) -> tuple[str | None, str] | None:
    """(the URL token or None, the object's key) if ``target`` names an object the fast
    path may answer; None hands the request to aiohttp."""
    m = _TARGET.fullmatch(target)
    if m is None:
        return None
    token, title, rel = (g.decode("ascii") if g else None for g in m.groups())
    assert title is not None and rel is not None
    if not is_valid_title_id(title) or not is_valid_rel_path(rel):
        return None
    return token, f"titles/{title}/{rel}"


def refusable(buf: bytes | bytearray, end: int) -> tuple[bool, bool] | None:
    """(signed route, HEAD) if the request whose head is ``buf[:end]`` may be refused from
    its request line alone (see FrontProtocol._refuse_quickly); None if it needs the full
    parse: it is no plain HTTP/1.1 GET or HEAD of an object, names a _QUICK_VETO header,
    or has a bare CR or LF."""
    eol = buf.find(b"\r\n", 0, end)
    if eol < 0:
        eol = end
    line = _QUICK_LINE.fullmatch(buf, 0, eol)
    if line is None or _QUICK_VETO.search(buf, eol, end) is not None:
        return None
    crlf = buf.count(b"\r\n", 0, end)
    if buf.count(b"\n", 0, end) != crlf or buf.count(b"\r", 0, end) != crlf:
        return None  # a bare CR or LF: a reader might see a line (a body header) in it
    # The match reads buf when asked: taken now, before the caller deletes the request.
    return line[2] == b"s", line[1] == b"HEAD"


class _HttpDate:
    """The Date header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True)
        return self._value


class Front:
    """The front protocol's shared state: the appliance, aiohttp's protocol factory, and
    the connections still on the fast path (for shutdown)."""

    def __init__(self, app: web.Application, appliance: Appliance) -> None:
        self.app = app
        self.appliance = appliance
        self.connections: set[FrontProtocol] = set()
        self.date = _HttpDate()
        self.closing = False
        self.aiohttp: Callable[[], asyncio.Protocol] | None = None
        self.access_log: logging.Logger | None = None
        self.keepalive_timeout_s = service.KEEPALIVE_TIMEOUT_S
        self._shed_heads: dict[tuple[str, str, bool], bytes] = {}
        # The event loop's time spent answering in its current turn (see ``over_budget``).
        self.turn_budget_s = appliance.config.limiter_lag_target_s
        self._turn_spent_s = 0.0
        self._turn_answers = 0
        self._turn_armed = False
        # Quick refusals of this turn (FrontProtocol._refuse_quickly), counted when it ends:
        # (signed route, HEAD) -> requests; and their answers, built once a turn.
        self._turn_refused: dict[tuple[bool, bool], int] = {}
        self._turn_refusals: dict[bool, bytes] = {}

    def over_budget(self) -> bool:
        """Whether this loop turn has already spent its budget on answers: the requests
        still to read in it are refused. However many connections are ready at once (a
        thousand clients asking together), a turn then lasts about the budget plus the
        refusals, so the loop's delay, and the wait of every request, stays bounded. A turn
        always answers TURN_MIN_ANSWERS first: a few clients at a time (a closed-loop test,
        a handful of players fetching 2 MB disk hits) are never refused for it."""
        return (
            self.turn_budget_s > 0
            and self._turn_answers >= TURN_MIN_ANSWERS
            and self._turn_spent_s >= self.turn_budget_s
        )

    def spent(self, seconds: float) -> None:
        """Count an answer's time against this turn; the next turn starts afresh."""
        self._turn_spent_s += seconds
        self._turn_answers += 1
        if not self._turn_armed:
            self._turn_armed = True
            asyncio.get_running_loop().call_soon(self._new_turn)  # runs after this turn's I/O

    def _new_turn(self) -> None:
        self._turn_spent_s, self._turn_answers, self._turn_armed = 0.0, 0, False
        if self._turn_refused:
            for (signed, head), n in self._turn_refused.items():
                self.appliance.shed(n)
                self.appliance.limiter.refuse(n)
                method = "HEAD" if head else "GET"
                service.count_request(self.app, _ROUTES[signed], method, 503, 0, 0.0, n)
            self._turn_refused.clear()
            self._turn_refusals.clear()

    def quick_refusal(self, signed: bool, head: bool) -> bytes:
        """The whole 503 for a request refused from its request line (over_budget), counted
        in bulk when the turn ends: at 3x load most answers are these, and the turn's
        bookkeeping, once per request, cost as much as the system calls."""
        key = (signed, head)
        self._turn_refused[key] = self._turn_refused.get(key, 0) + 1
        answer = self._turn_refusals.get(head)
        if answer is None:
            retry_after = str(self.appliance.limiter.retry_after_s())
            answer = self.shed_head(retry_after, close=False)
            self._turn_refusals[head] = answer = answer if head else answer + SHED_BODY
        return answer

    def shed_head(self, retry_after: str, close: bool) -> bytes:
        """The head of a 503 (RFC 9110 15.6.4, 10.2.3), built once per second: under
        overload most answers are these, and each must cost far less than a hit."""
        date = self.date.now()
        key = (date, retry_after, close)
        head = self._shed_heads.get(key)
        if head is None:
            if len(self._shed_heads) > 64:
                self._shed_heads.clear()  # older seconds
            lines = [
                "HTTP/1.1 503 Service Unavailable",
                f"Date: {date}",
                "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(SHED_BODY)}",
                f"Retry-After: {retry_after}",
                *(["Connection: close"] if close else []),
            ]
            head = self._shed_heads[key] = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head

    def wrap(
        self,
        aiohttp: Callable[[], asyncio.Protocol],
        access_log: logging.Logger | None,
        keepalive_timeout_s: float,
    ) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to listen with, in front of aiohttp's."""
        self.aiohttp, self.access_log = aiohttp, access_log
        self.keepalive_timeout_s = keepalive_timeout_s
        return lambda: FrontProtocol(self)

    def open_connections(self) -> int:
        """Client connections open now, on the fast path and handed over to aiohttp."""
        handed_over = getattr(self.aiohttp, "connections", ())
        return len(self.connections) + len(handed_over)

    async def shutdown(self, timeout: float) -> None:
        """Close idle fast connections now; let answers in progress finish, up to ``timeout``."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()


class FrontProtocol(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.appliance = front.appliance
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.buf = bytearray()
        self.busy = False  # a disk hit is being sent: later requests wait in buf
        self.eof = False  # the client sent all it will send
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._out: socket.socket | None = None  # a dup of the socket, for os.sendfile
        self._limits: tuple[int, int] | None = None  # the transport's write buffer limits
        self._slot_since: float | None = None  # a memory answer not yet sent holds a slot
        self._last_done = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    # -- connection events --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        # pause_writing whenever anything is left unsent, resume_writing once it has all
        # gone: a memory answer holds its limiter slot until then (_hold_slot).
        self._limits = transport.get_write_buffer_limits()  # type: ignore[attr-defined]
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
        self.front.connections.add(self)
        self._arm_idle(self.front.keepalive_timeout_s)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def eof_received(self) -> bool:
        """The client half-closed after its requests: answer them, then close."""
        self.eof = True
        if not self.busy:
            self._process()
            if not self.busy:
                self.close()
        return True  # keep the transport open for the answers

    def connection_lost(self, exc: Exception | None) -> None:
        self._release_slot()
        self._detach()
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("client went away"))

    def pause_writing(self) -> None:
        self.write_paused = True
        self._stall_timer = asyncio.get_running_loop().call_later(SEND_STALL_S, self.abort)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._release_slot()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._process()

    # -- the request loop ---------------------------------------------------------------

    def _process(self) -> None:
        while self.transport is not None and not self.busy and not self.write_paused:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    self._hand_over()
                return
            if end > MAX_HEAD_BYTES:
                self._hand_over()
                return
            front = self.front
            if front.over_budget() and not front.closing and self._refuse_quickly(end):
                continue  # (while closing, a 503 says Connection: close: the full path)
            request = parse_head(self.buf, end)
            if request is None or not self._answer(request):
                self._hand_over()
                return

    def _refuse_quickly(self, end: int) -> bool:
        """Refuse the request whose head ends at ``end`` with a 503 from its request line
        alone (the loop turn is over its budget); False if it needs the full parse.

        Parsing every header, matching the route and counting each refusal cost most of a
        refusal's CPU, and under 3x load refusals are most of the answers. A refusal
        reads nothing it could get wrong: what it must know, where the request ends and
        whether to keep the connection, ``refusable`` sends elsewhere. So a malformed
        object request (no Host, a bad title) gets 503 here where the full path gives 400;
        its retry, once the appliance has room, gets the 400."""
        buf = self.buf
        quick = refusable(buf, end)
        if quick is None:
            return False
        assert self.transport is not None
        signed, head = quick
        if self.front.access_log is not None:
            method, path, _ = bytes(buf[: buf.find(b"\r\n")]).decode("ascii").split(" ")
            service.log_access(self.front.access_log, method, path, 503, 0, 0.0, self.remote)
        del buf[: end + 4]
        self.transport.write(self.front.quick_refusal(signed, head))
        self._last_done = time.monotonic()
        return True

    def _answer(self, request: Request) -> bool:
        """Answer ``request`` if it is a hit; False leaves it (still in buf) to aiohttp."""
        started = time.monotonic()
        target = object_target(request.target)
        if target is None:
            return False
        token, key = target
        appliance = self.appliance
        route = _ROUTES[token is not None]
        if self.front.over_budget():
            appliance.limiter.refuse()
            del self.buf[: request.head_len]
            self._shed(request, route, started)
            return True
        if not appliance.limiter.try_acquire():
            # Shed first, before the token's HMAC and the lookup, and not through aiohttp:
            # under overload a 503 must cost far less than the answer it replaces, and the
            # connection stays on the fast path for its next request.
            del self.buf[: request.head_len]
            self._shed(request, route, started)
            return True
        if token is None:
            if request.auth is not None:
                if not request.auth.startswith("Bearer "):
                    appliance.limiter.cancel()
                    return False
                token = request.auth.removeprefix("Bearer ").strip(" \t")
            elif not appliance.config.open:
                appliance.limiter.cancel()
                return False
        if token is not None:
            grant = verify(token, key, keys=appliance.keys, now=time.time(), client_ip=self.remote)
            if isinstance(grant, TokenError):
                appliance.limiter.cancel()
                return False  # aiohttp's path answers 403 with the reason
        hit = appliance.find_hit(key, request.headers)
        if hit is None:
            appliance.limiter.cancel()  # aiohttp's path takes it, and a slot of its own
            return False
        fd = None
        if hit.entry is not None and hit.status in (200, 206) and request.method == "GET":
            try:
                fd = os.open(hit.entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                appliance.limiter.cancel()
                appliance.moved(hit.entry)  # evicted since the lookup: aiohttp's path fills it
                return False
            if not appliance.unchanged(hit.entry, fd):  # rewritten since its check
                os.close(fd)
                appliance.limiter.cancel()
                return False  # aiohttp's path checks it again before a byte leaves
        del self.buf[: request.head_len]
        appliance.read_ahead_after(key)
        if fd is not None:
            self._send_disk(request, hit, fd, route, started)
        else:
            nbytes = self._send_memory(request, hit)
            self._hold_slot(started)
            self._done(request, hit, route, nbytes, started)
        self.front.spent(time.monotonic() - started)
        return True

    def _hold_slot(self, started: float) -> None:
        """Keep a memory answer's limiter slot until the answer has left the process (as a
        disk answer does until sendfile ends): releasing it at write() would count a 2 MB
        answer still queued behind a slow socket as done, and nothing would ever be shed."""
        assert self.transport is not None
        self._slot_since = started
        if not self.transport.get_write_buffer_size():
            self._release_slot()
        # else resume_writing (or connection_lost) releases it

    def _release_slot(self) -> None:
        if self._slot_since is not None:
            now = time.monotonic()
            self.appliance.limiter.release(now - self._slot_since, now)
            self._slot_since = None

    def _shed(self, request: Request, route: str, started: float) -> None:
        """Answer 503 with Retry-After (RFC 9110 15.6.4, 10.2.3): the limiter is full."""
        assert self.transport is not None
        close = request.close or self.front.closing
        head = self.front.shed_head(self.appliance.shed()["Retry-After"], close)
        self.transport.write(head if request.method == "HEAD" else head + SHED_BODY)
        self._log(request, route, 503, 0, started)
        if close:
            self.close()

    def _head(self, hit: Hit, close: bool) -> bytes:
        length = "" if hit.status == 304 else f"Content-Length: {hit.length}\r\n"
        extra = "".join([f"{k}: {v}\r\n" for k, v in hit.extra.items()])
        if close:
            extra += "Connection: close\r\n"
        return (
            f"HTTP/1.1 {hit.status} {_REASONS[hit.status]}\r\nDate: {self.front.date.now()}\r\n"
            f"{length}{hit.fixed_text}{extra}\r\n"
        ).encode("latin-1")

    def _send_memory(self, request: Request, hit: Hit) -> int:
        """Write a memory hit (or a bodiless answer); the body bytes sent."""
        assert self.transport is not None
        head = self._head(hit, request.close or self.front.closing)
        if request.method == "HEAD" or hit.status in (304, 416) or hit.data is None:
            self.transport.write(head)
            return 0
        body = hit.body
        if len(body) < JOIN_BELOW_BYTES:
            self.transport.write(head + body)
        else:
            # One writev: head and body leave together, in full segments (two writes
            # under TCP_NODELAY send the head as a short segment of its own).
            self.transport.writelines((head, body))  # immutable bytes: safe to hold on to
        return len(body)

    def _send_disk(self, request: Request, hit: Hit, fd: int, route: str, started: float) -> None:
        """Send a disk hit with os.sendfile: as far as the socket takes it now, the rest from
        a task while reading is paused (later pipelined requests wait their turn)."""
        entry = hit.entry
        assert entry is not None and self.transport is not None
        close = request.close or self.front.closing
        job = _FileSend(self._head(hit, close), fd, entry.body_offset + hit.start, hit.length)
        try:
            if not self.transport.get_write_buffer_size():  # else queued bytes must go first
                job.push(self._socket())
        except (EOFError, OSError) as exc:
            self._disk_finished(request, hit, job, route, started, exc)
            return
        if job.done:
            self._disk_finished(request, hit, job, route, started, None)
            return
        self.busy = True
        self.transport.pause_reading()
        self.appliance.spawn(self._send_disk_rest(request, hit, job, route, started))

    async def _send_disk_rest(
        self, request: Request, hit: Hit, job: _FileSend, route: str, started: float
    ) -> None:
        error: BaseException | None = None
        try:
            async with asyncio.timeout(send_deadline_s(hit.length)):
                await self._drain()
                out = self._socket()
                while not job.push(out):
                    await writable(out.fileno())
        except (EOFError, OSError, TimeoutError) as exc:
            error = exc
        self.busy = False
        self._disk_finished(request, hit, job, route, started, error)
        if self.transport is not None:
            self.transport.resume_reading()
            self._process()
            if self.eof and not self.busy:
                self.close()

    def _disk_finished(
        self,
        request: Request,
        hit: Hit,
        job: _FileSend,
        route: str,
        started: float,
        error: BaseException | None,
    ) -> None:
        os.close(job.fd)
        corrupt = isinstance(error, EOFError)  # the file shrank under us
        now = time.monotonic()
        self.appliance.limiter.release(now - started, now, dropped=corrupt)
        if corrupt:
            self.appliance.spawn(self.appliance.drop_corrupt(hit.meta.key))
        if error is not None:
            self.abort()  # the client left or stalled mid-body: the connection is done
            return
        self._done(request, hit, route, hit.length, started)

    def _done(self, request: Request, hit: Hit, route: str, nbytes: int, started: float) -> None:
        self.appliance.sent(hit, nbytes)
        self._log(request, route, hit.status, nbytes, started)
        if request.close or self.front.closing:
            self.close()

    def _log(self, request: Request, route: str, status: int, nbytes: int, started: float) -> None:
        now = time.monotonic()
        service.count_request(self.front.app, route, request.method, status, nbytes, now - started)
        if self.front.access_log is not None:
            path = request.target.decode("ascii")
            service.log_access(
                self.front.access_log, request.method, path, status, nbytes, now - started,
                self.remote,
            )  # fmt: skip
        self._last_done = now

    # -- output plumbing ------------------------------------------------------------------

    async def _drain(self) -> None:
        """Wait until the transport has sent everything it buffered (os.sendfile writes to
        the socket behind its back, so anything queued would arrive after the body)."""
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if not transport.get_write_buffer_size():
            return
        low, high = transport.get_write_buffer_limits()
        self._drained = asyncio.get_running_loop().create_future()
        transport.set_write_buffer_limits(high=0)  # resume_writing once the buffer is empty
        try:
            await self._drained
        finally:
            self._drained = None
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    def _socket(self) -> socket.socket:
        """The connection's socket, for os.sendfile."""
        # A duplicate descriptor: uvloop refuses add_writer() on the transport's own, and
        # the duplicate keeps naming our socket if uvloop closes its descriptor meanwhile.
        if self._out is None:
            if self.transport is None:
                raise ConnectionResetError("client went away")
            sock = self.transport.get_extra_info("socket")
            self._out = socket.socket(fileno=os.dup(sock.fileno()))
            self._out.setblocking(False)
        return self._out

    # -- leaving ------------------------------------------------------------------------

    def _hand_over(self) -> None:
        """Give the connection, and what it sent that is not answered yet, to aiohttp."""
        transport = self.transport
        factory = self.front.aiohttp
        if transport is None or factory is None:
            return
        data = bytes(self.buf)
        self._detach()
        if self._limits is not None:
            low, high = self._limits
            transport.set_write_buffer_limits(high=high, low=low)
        protocol = factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        transport.resume_reading()
        if data:
            protocol.data_received(data)
        if self.eof:
            protocol.eof_received()

    def _detach(self) -> None:
        self.front.connections.discard(self)
        self.transport = None
        self.buf.clear()
        for timer in (self._idle_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        if self._out is not None:
            self._out.close()
            self._out = None

    def close(self) -> None:
        """Close after what is written has been sent; nothing more is read or answered."""
        transport = self.transport
        if transport is not None:
            self._detach()
            transport.close()

    def close_if_idle(self) -> None:
        if not self.busy:
            self.close()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all."""
        transport = self.transport
        if transport is not None:
            self._detach()
            transport.abort()

    def _arm_idle(self, delay: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        if self.transport is None:
            return
        left = self._last_done + self.front.keepalive_timeout_s - time.monotonic()
        if self.busy or left > 0:
            self._arm_idle(max(left, 0.1))
        else:
            self.close()  # no complete request for KEEPALIVE_TIMEOUT_S


class _FileSend:
    """A response head, then a region of a file, pushed to a non-blocking socket."""

    __slots__ = ("count", "fd", "head", "offset")

    def __init__(self, head: bytes, fd: int, offset: int, count: int) -> None:
        self.head = memoryview(head)
        self.fd = fd
        self.offset = offset
        self.count = count

    @property
    def done(self) -> bool:
        return not self.head and not self.count

    def push(self, out: socket.socket) -> bool:
        """Send what the socket takes now; True when everything is sent."""
        try:
            # MSG_MORE holds the head back until the body follows, so both leave in full
            # segments (what nginx's tcp_nopush does with TCP_CORK, without two
            # setsockopt calls per response); sendfile pushes its last part itself.
            more = socket.MSG_MORE if self.count else 0
            while self.head:
                self.head = self.head[out.send(self.head, more) :]
            while self.count:
                # Each call is bounded by the socket's free buffer, so it cannot hold
                # the loop for long; a full socket raises BlockingIOError.
                sent = os.sendfile(out.fileno(), self.fd, self.offset, self.count)
                if sent == 0:
                    raise EOFError(f"file ends before byte {self.offset}")
                self.offset += sent
                self.count -= sent
        except BlockingIOError:
            return False
        return True
