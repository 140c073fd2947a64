"""A minimal HTTP/1.1 responder for ``listener { http: true }``.

Only what monitoring needs: ``GET /metrics``, ``/healthz``, ``/readyz``.
One request per connection (``Connection: close``): scrapers reconnect
cheaply and the responder keeps no per-connection state beyond the request
head. The engine owns the socket; this class only sees its bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_REQUEST_HEAD = 16384

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
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

    def __init__(self, conn_id: int, routes: dict[str, Route], host: HttpHost) -> None:
        self.id = conn_id
        self._routes = routes
        self._host = host
        self._buf = bytearray()
        self._done = False

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
        self._answer(route(), head_only=method == "HEAD")

    def _answer(self, reply: HttpReply, head_only: bool = False) -> None:
        self._done = True
        self._host.conn_write(self.id, render(reply, head_only))
        self._host.conn_close(self.id)
