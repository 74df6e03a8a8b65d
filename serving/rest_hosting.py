"""How the REST server meets its connections: the listening socket, the per-connection protocol, log lines.

* `listening_socket`: `::` with IPV6_V6ONLY off (dual stack, as TF Serving
  listens), or 0.0.0.0 where the host has no IPv6.
* `HeaderDeadlineProtocol` / `HeaderDeadlineServer`: aiohttp's connection
  handler with `--rest_api_header_timeout_s` added (aiohttp has no such
  setting): a connection whose request line and headers have not all arrived
  that long after their first byte is closed, so slow clients cannot hold
  connections open.
* `OneLineErrors`: aiohttp logs a malformed HTTP request with its traceback;
  this filter makes it one escaped line.

`serving/rest.py` routes and answers the requests these connections carry.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from serving.errors import escape_for_log

log = logging.getLogger("serving.rest")


class OneLineErrors(logging.Filter):
    """Logs aiohttp's malformed-request errors as one escaped line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            detail = getattr(error, "message", None) or str(error)
            record.msg = escape_for_log(f"{record.getMessage()}: {type(error).__name__}: {detail}")[:500]
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


class HeaderDeadlineProtocol(RequestHandler):
    """aiohttp's connection handler, closing a connection whose request headers come too slowly.

    The clock starts at the first byte of a request and stops when aiohttp has
    parsed the request line and headers and calls the server's handler
    (`headers_read`); the next request on a kept-alive connection starts it
    again (`request_done`). Before the first byte, the idle timeout applies.
    """

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True

    def data_received(self, data: bytes) -> None:
        # Most requests arrive with all their headers in one read: no clock needed for those.
        if (
            self._awaiting_headers
            and self._header_timer is None
            and self.transport is not None
            and b"\r\n\r\n" not in data
        ):
            self._header_timer = asyncio.get_running_loop().call_later(
                self._header_timeout_s, self._headers_too_slow
            )
        super().data_received(data)

    def headers_read(self) -> None:
        self._awaiting_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def request_done(self) -> None:
        self._awaiting_headers = True

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            log.info(
                "closing REST connection from %s: request headers incomplete after %.1f s "
                "(--rest_api_header_timeout_s)",
                peer,
                self._header_timeout_s,
            )
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


class HeaderDeadlineServer(web.Server):
    """`web.Server` whose connections get a header deadline (when one is set)."""

    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        if self._header_timeout_s <= 0:
            return super().__call__()
        return HeaderDeadlineProtocol(
            self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs
        )


def listening_socket(host: str | None, port: int) -> socket.socket:
    """A listening TCP socket: `host`, or `::` accepting IPv4 too, or 0.0.0.0 without IPv6."""
    if host is None and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as e:
            if e.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise
        else:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack, like TF Serving
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::", port))
            except OSError as e:
                sock.close()
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise
            else:
                sock.setblocking(False)
                return sock
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
