"""A minimal HTTP/1.1 responder for ``listener { http: true }``.

Only what monitoring needs: ``GET /metrics``, ``/healthz``, ``/readyz``.
One request per connection (``Connection: close``): scrapers reconnect
cheaply and the responder keeps no per-connection state beyond the request
head. The engine owns the socket; this class only sees its bytes.

A client has ``request_timeout_s`` from connecting to send its whole
request head (``expired``, checked by the adaptor's housekeeping): it is
answered ``408`` and closed otherwise, so idle or half-sent requests never
hold a descriptor for long. There is no keep-alive to time out: every
connection is closed after its answer. A page that raises is answered
``500`` (and logged); the listener serves on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from router.log import get_logger
from router.management.limits import HTTP_REQUEST_TIMEOUT_S

_log = get_logger("HTTP")

MAX_REQUEST_HEAD = 16384

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], HttpReply]


class HttpHost(Protocol):
    def conn_write(self, conn_id: int, data: bytes) -> bool: ...

    def conn_close(self, conn_id: int, abort: bool = False) -> None: ...


def render(reply: HttpReply, head_only: bool = False) -> bytes:
    reason = REASONS.get(reply.status, "Error")
    head = (
        f"HTTP/1.1 {reply.status} {reason}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + reply.body


class HttpConnection:
    """One HTTP client: reads one request head, answers, closes."""

    def __init__(
        self,
        conn_id: int,
        routes: dict[str, Route],
        host: HttpHost,
        request_timeout_s: float = HTTP_REQUEST_TIMEOUT_S,
        peer: str = "",
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self._routes = routes
        self._host = host
        self._buf = bytearray()
        self._done = False
        self.opened = time.monotonic()
        self.request_timeout_s = request_timeout_s

    def expired(self, now: float) -> bool:
        """Answers 408 and closes when the request head did not come in time."""
        if self._done or now - self.opened <= self.request_timeout_s:
            return False
        self._answer(
            HttpReply(
                408,
                f"no complete request head within {self.request_timeout_s:g} s\n".encode(),
            )
        )
        return True

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_REQUEST_HEAD:
                self._answer(HttpReply(431, b"request head too large\n"))
            return
        self._answer_request(bytes(self._buf[:end]))

    def eof(self) -> None:
        if not self._done:
            self._done = True
            self._host.conn_close(self.id)

    def closed(self) -> None:
        self._done = True

    def _answer_request(self, head: bytes) -> None:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._answer(HttpReply(400, b"malformed request line\n"))
            return
        method, target, _version = parts
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._answer(HttpReply(405, f"method {method} not allowed; use GET\n".encode()))
            return
        route = self._routes.get(path)
        if route is None:
            known = ", ".join(sorted(self._routes))
            self._answer(HttpReply(404, f"no page {path}; pages: {known}\n".encode()))
            return
        try:
            reply = route()
        except Exception:  # noqa: BLE001 - one page's bug must not end the listener
            _log.exception(f"HTTP connection {self.id}: page {path} failed")
            reply = HttpReply(500, f"page {path} failed; see the router's log\n".encode())
        self._answer(reply, head_only=method == "HEAD")

    def _answer(self, reply: HttpReply, head_only: bool = False) -> None:
        self._done = True
        self._host.conn_write(self.id, render(reply, head_only))
        self._host.conn_close(self.id)
