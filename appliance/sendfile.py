"""Sending a region of a file as an HTTP response body, zero-copy under uvloop.

uvloop has no ``loop.sendfile``, so aiohttp's FileResponse silently falls back to
read + write there. This module calls ``os.sendfile`` on the connection's socket itself
and keeps a plain read + write path for connections where that cannot work (1.6x
FileResponse's throughput for a 2 MiB segment under uvloop: bench/README.md). Usage::

    response = web.StreamResponse(status=206, headers={"Content-Range": ...})
    response.content_length = count  # the caller sets status and every header
    await send_file_region(request, response, fd, offset, count)
    return response  # already finished: send_file_region called write_eof()

``file`` is an open file or its descriptor; reads are positional (``os.pread``,
``os.sendfile`` with an offset), so its position is neither used nor moved and one
descriptor can serve many requests at once. The caller keeps ownership and closes it.
A HEAD request gets the headers only (RFC 9110 9.3.2).

Errors: a client that goes away mid-body raises ``ConnectionError`` (as
``StreamResponse.write`` does; catch it and return the response to keep aiohttp from
logging it as a server error); a file shorter than ``offset + count`` raises
``EOFError``. Either way the connection is closed, since the body promised by
Content-Length can no longer be completed (RFC 9112 6.3) and a keep-alive peer would
read the next response as the rest of this body.

Both paths read the file on the event loop thread: the appliance serves hot objects
from the page cache, where a read costs microseconds; a cold read blocks the loop for
as long as the disk takes (nginx without ``aio threads`` does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import socket
import sys
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

COPY_CHUNK_BYTES = 256 * 1024  # per read + write on the copy path
# Most bytes sent per os.sendfile call: a client that reads as fast as we send never
# fills the socket, and other connections get a turn of the event loop between calls.
SENDFILE_SLICE_BYTES = 1024 * 1024
SEND_STALL_S = 30.0  # a client that takes longer than this to take one chunk is dropped
MIN_SEND_BPS = 64 * 1024  # bytes/s: a body sent slower than this (and SEND_STALL_S) is dropped


def send_deadline_s(length: int) -> float:
    """How long a body of ``length`` bytes may take before its client counts as stalled."""
    return max(SEND_STALL_S, length / MIN_SEND_BPS)


class Transfer(enum.Enum):
    SENDFILE = "sendfile"  # os.sendfile from the page cache to the socket: no copy in Python
    COPY = "copy"  # os.pread into bytes, then response.write: always correct


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def choose_transfer(
    prefer: Transfer, *, tls: bool, socket_fd: int | None, compressed: bool
) -> Transfer:
    """The transfer to use on a connection; SENDFILE only where it sends the right bytes."""
    if (
        prefer is Transfer.SENDFILE
        # Linux's sendfile and TCP_CORK; other systems' sendfile differs on partial sends.
        and sys.platform == "linux"
        and socket_fd is not None
        # The socket under a TLS transport carries ciphertext: sendfile would bypass it.
        and not tls
        # aiohttp compresses (and chunks) only what passes through response.write.
        and not compressed
    ):
        return Transfer.SENDFILE
    return Transfer.COPY


async def send_file_region(
    request: web.BaseRequest,
    response: web.StreamResponse,
    file: int | _HasFileno,
    offset: int,
    count: int,
    *,
    prefer: Transfer = Transfer.SENDFILE,
) -> Transfer:
    """Prepare ``response``, send ``count`` bytes of ``file`` from ``offset``, finish it.

    Returns the transfer used: ``prefer`` unless the connection rules it out (TLS, a
    transport without a socket, compression), in which case COPY.
    """
    if offset < 0 or count < 0:
        raise ValueError(f"offset {offset} and count {count} must be >= 0")
    if response.content_length != count:
        raise ValueError(f"Content-Length {response.content_length} must equal count {count}")
    fd = file if isinstance(file, int) else file.fileno()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away before the response")
    sock = transport.get_extra_info("socket")
    socket_fd = sock.fileno() if sock is not None else None
    transfer = choose_transfer(
        prefer,
        tls=transport.get_extra_info("sslcontext") is not None,
        socket_fd=socket_fd,
        compressed=response.compression,
    )

    # RFC 9110 9.3.2: no content in a response to HEAD; 6.4.1: nor in a 204 or 304.
    bodiless = request.method == "HEAD" or response.status in (204, 304) or count == 0
    try:
        if transfer is Transfer.SENDFILE and not bodiless:
            assert socket_fd is not None  # choose_transfer checked
            await _send_zero_copy(request, response, transport, socket_fd, fd, offset, count)
        else:
            await response.prepare(request)
            if not bodiless:
                await _copy(response, fd, offset, count)
    except BaseException:
        if response.prepared:
            transport.close()  # the body is cut short: see the module docstring
        raise
    await response.write_eof()
    return transfer


async def _send_zero_copy(
    request: web.BaseRequest,
    response: web.StreamResponse,
    transport: asyncio.Transport,
    socket_fd: int,
    fd: int,
    offset: int,
    count: int,
) -> None:
    # A duplicate of the socket's descriptor, for two reasons. uvloop refuses
    # loop.add_writer() on a descriptor its transport owns ("File descriptor N is used by
    # transport"), and we must wait for writability when the socket buffer is full. And
    # if the client goes away while we wait, uvloop closes its descriptor, whose number
    # the next accepted connection may reuse; the duplicate still names our socket.
    with socket.socket(fileno=os.dup(socket_fd)) as out:
        # Corked, the headers and the body leave in full segments, as with nginx's
        # tcp_nopush; uncorking sends the tail. Uncorked, aiohttp's TCP_NODELAY sent the
        # headers and the end of every partial sendfile as short segments: 54 instead of
        # 39 per 2 MiB, and 2 instead of 1 per 1 KiB, which cost the client (see bench/).
        out.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        try:
            writer = await response.prepare(request)
            assert writer is not None  # None only for a response already finished
            await _flush(transport, writer)
            await sendfile_all(out.fileno(), fd, offset, count)
        finally:
            with contextlib.suppress(OSError):  # the socket may be dead: keep the first error
                out.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


async def _flush(transport: asyncio.Transport, writer: AbstractStreamWriter) -> None:
    """Wait until the transport's buffer (the headers, maybe a previous body) is sent.

    os.sendfile writes to the socket behind the transport's back, so anything still
    queued in the transport would reach the client after the body. uvloop writes to
    the socket at once when it can, so this waits only when the socket was full.
    """
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    # With a high-water mark of 0 the transport pauses the protocol while anything is
    # buffered and resumes it when the buffer is empty, which is what drain() awaits.
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


async def sendfile_all(out: int, fd: int, offset: int, count: int) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset`` to the non-blocking socket ``out``."""
    while count:
        try:
            sent = os.sendfile(out, fd, offset, min(count, SENDFILE_SLICE_BYTES))
        except BlockingIOError:
            await writable(out)
            continue
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionResetError(f"client went away, {count} bytes unsent") from exc
        if sent == 0:
            raise EOFError(f"file ends before byte {offset}: {count} bytes short")
        offset += sent
        count -= sent
        if count:
            await asyncio.sleep(0)


async def writable(fd: int) -> None:
    """Wait until the non-blocking socket ``fd`` (not one a transport owns) takes bytes."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():  # the writer may fire again before the waiting task runs
        ready.set_result(None)


async def _copy(response: web.StreamResponse, fd: int, offset: int, count: int) -> None:
    while count:
        # Fresh bytes for every chunk: uvloop keeps a reference to what it could not
        # send yet, so a reused buffer would be overwritten under it.
        chunk = os.pread(fd, min(COPY_CHUNK_BYTES, count), offset)
        if not chunk:
            raise EOFError(f"file ends before byte {offset}: {count} bytes short")
        await response.write(chunk)
        offset += len(chunk)
        count -= len(chunk)
