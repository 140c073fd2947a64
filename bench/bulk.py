"""Long streams: a verifying sink server and bulk sender processes.

Why a sink that verifies rather than an echo: a bulk figure must count the
bytes a relay carried in one direction (an echo doubles them and mixes the
two directions), and every byte must still be checked. Each stream starts
with a 16-byte header naming a seed; the sender then sends the seed's
pseudo-random pattern (a period of ``PERIOD`` bytes, chosen not to divide
any buffer size, so a dropped or repeated block shifts the stream and is
caught), the sink compares every received byte with the expected pattern
(``bytes.startswith`` at an offset: a memcmp, no copy) and, on the sender's
half-close, answers with the byte count and the offset of the first wrong
byte. The sender compares the count with what it sent. That is a checksum
that cannot collide: a lost, duplicated or flipped byte fails the stream.

Why processes and blocking sockets: a sender is a loop of ``sendall`` on a
large memoryview, which releases the GIL for the whole copy into the
kernel; one process per stream keeps the streams independent of each
other's interpreter.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Protocol

from bench.host import raise_nofile_limit, read_process_cpu_s

MAGIC = b"SKB1"
HEADER = struct.Struct("!4sQI")  # magic, seed, reserved
VERDICT = struct.Struct("!QQ")  # bytes received, first bad offset (NO_ERROR if none)
NO_ERROR = (1 << 64) - 1
PERIOD = (1 << 20) + 13  # pattern period: prime-ish, not a divisor of any chunk size
CHUNK = 256 * 1024
SAMPLE_S = 0.1  # bytes-over-time resolution
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
VERDICT_TIMEOUT_S = 30.0
MAX_STREAMS = 256


def pattern(seed: int) -> bytes:
    """PERIOD pseudo-random bytes of seed, followed by its first CHUNK bytes
    again so that any window [off, off+CHUNK) with off < PERIOD is contiguous."""
    body = random.Random(seed).randbytes(PERIOD)
    return body + body[:CHUNK]


@dataclass(slots=True)
class StreamCheck:
    """The sink's running check of one stream."""

    pattern: bytes
    received: int = 0
    first_bad: int = NO_ERROR

    def feed(self, data: bytes) -> None:
        """Compares data with the pattern at the current offset (in CHUNK pieces)."""
        view = memoryview(data)
        pos = 0
        n = len(data)
        while pos < n:  # bounded: advances by at most CHUNK each turn
            take = min(CHUNK, n - pos)
            off = (self.received + pos) % PERIOD
            piece = bytes(view[pos : pos + take]) if take < n else data
            if self.first_bad == NO_ERROR and not self.pattern.startswith(piece, off):
                self.first_bad = (
                    self.received + pos + _first_diff(piece, self.pattern[off : off + take])
                )
            pos += take
        self.received += n


def _first_diff(a: bytes, b: bytes) -> int:
    """Index of the first differing byte (only called on a mismatch)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# ---------------------------------------------------------------- sink server


def _serve_stream(conn: socket.socket, corrupt: bool) -> None:
    """One stream: header, then verify until EOF, then the verdict."""
    with conn:
        try:
            head = _recv_exact(conn, HEADER.size, "header")
            magic, seed, _ = HEADER.unpack(head)
            if magic != MAGIC:
                conn.sendall(VERDICT.pack(0, 0))
                return
            check = StreamCheck(pattern(seed))
            for _ in range(1 << 40):  # bounded by the sender's EOF
                data = conn.recv(CHUNK)
                if not data:
                    break
                if corrupt and check.received == 0:
                    data = bytes([data[0] ^ 0x01]) + data[1:]
                check.feed(data)
            conn.sendall(VERDICT.pack(check.received, check.first_bad))
        except (OSError, EOFError):
            return  # the sender reports the broken stream


class _Receiver(Protocol):
    def recv(self, n: int, /) -> bytes: ...


def _recv_exact(conn: _Receiver, n: int, what: str) -> bytes:
    """n bytes from a plain or TLS stream; EOFError names what was cut short."""
    buf = b""
    for _ in range(n):  # bounded: at least one byte per turn
        if len(buf) >= n:
            break
        part = conn.recv(n - len(buf))
        if not part:
            raise EOFError(f"closed before the {what}")
        buf += part
    return buf


def sink_process_main(port: int, corrupt: bool, ctl: Connection) -> None:
    """Entry point of the sink process: one thread per stream (recv and the
    memcmp release the GIL for most of their time)."""
    raise_nofile_limit()
    srv = socket.create_server(("127.0.0.1", port), backlog=1024, reuse_port=True)
    ctl.send(int(srv.getsockname()[1]))
    stop = threading.Event()

    def watch() -> None:
        try:
            ctl.recv()
        except EOFError:
            pass  # parent gone: stop as well
        stop.set()
        # close() alone does not wake a thread blocked in accept(); shutdown does
        try:
            srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected / already closed: accept() fails either way
        srv.close()

    threading.Thread(target=watch, daemon=True).start()
    for _ in range(1 << 40):  # bounded by stop
        if stop.is_set():
            return
        try:
            conn, _addr = srv.accept()
        except OSError:
            return  # closed by watch()
        threading.Thread(target=_serve_stream, args=(conn, corrupt), daemon=True).start()


@dataclass
class SinkServer:
    """The verifying sink, in a process of its own."""

    port: int
    process: mp.process.BaseProcess
    control: Connection

    @classmethod
    def start(cls, corrupt: bool = False, port: int = 0) -> SinkServer:
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(
            target=sink_process_main,
            args=(port, corrupt, child_end),
            name="skiff-bench-sink",
            daemon=True,
        )
        p.start()
        child_end.close()
        if not parent_end.poll(START_TIMEOUT_S):
            p.terminate()
            raise RuntimeError("sink server did not report its port in time")
        return cls(int(parent_end.recv()), p, parent_end)

    def cpu_s(self) -> float:
        return read_process_cpu_s(self.process.pid) if self.process.pid else 0.0

    def stop(self) -> None:
        try:
            self.control.send("stop")
        except (BrokenPipeError, OSError):
            pass  # already gone
        self.process.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_TIMEOUT_S)
        self.control.close()

    def __enter__(self) -> SinkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- senders


class TlsStream:
    """A TLS client over a blocking socket through memory BIOs.

    Why not ssl.SSLSocket: its shutdown() drops the TLS state, so it cannot
    half-close. The bulk protocol must send close_notify (the proxy turns it
    into a FIN towards the sink) and then still read the sink's verdict."""

    MAX_TURNS = 1 << 20

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def handshake(self) -> None:
        for _ in range(self.MAX_TURNS):  # bounded: each turn reads or ends
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def sendall(self, data: memoryview | bytes) -> None:
        self.obj.write(data)  # an unbounded memory BIO takes all of it
        self._flush()

    def shutdown_write(self) -> None:
        """close_notify, keeping the read side."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is out; the peer's comes after the verdict
        self._flush()

    def recv(self, n: int) -> bytes:
        """Up to n decrypted bytes; b"" at the end of the stream."""
        for _ in range(self.MAX_TURNS):  # bounded: each turn reads or ends
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                self._fill()
            except ssl.SSLZeroReturnError:
                return b""
        return b""


@dataclass(slots=True)
class StreamResult:
    """What one sender saw."""

    seed: int
    sent: int = 0
    received_by_sink: int = 0
    first_bad: int = NO_ERROR
    error: str = ""
    started: float = 0.0
    ended: float = 0.0
    cpu_s: float = 0.0
    samples: list[int] = field(default_factory=list)  # bytes sent per SAMPLE_S

    @property
    def ok(self) -> bool:
        return not self.error and self.first_bad == NO_ERROR and self.sent == self.received_by_sink

    def failure(self) -> str | None:
        if self.error:
            return self.error
        if self.first_bad != NO_ERROR:
            return f"corrupted: first wrong byte at offset {self.first_bad}"
        if self.sent != self.received_by_sink:
            return f"lost data: sent {self.sent} bytes, sink received {self.received_by_sink}"
        return None


def send_stream(
    host: str,
    port: int,
    seed: int,
    start_at: float,
    duration_s: float,
    tls_ca: str | None = None,
) -> StreamResult:
    """Sends seed's pattern for duration_s, half-closes, reads the verdict
    (tls_ca: over TLS, verifying the server against that CA; the TLS
    handshake counts in the stream's time, as the TCP connect does)."""
    res = StreamResult(seed)
    data = pattern(seed)
    view = memoryview(data)
    cpu0 = time.process_time()
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    res.started = time.monotonic()
    deadline = res.started + duration_s
    next_sample = res.started + SAMPLE_S
    at_sample = 0
    try:
        with socket.create_connection((host, port), timeout=VERDICT_TIMEOUT_S) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s: socket.socket | TlsStream = raw
            if tls_ca is not None:
                from bench.pki import client_context

                s = TlsStream(raw, client_context(tls_ca))
                s.handshake()
            s.sendall(HEADER.pack(MAGIC, seed, 0))
            off = 0
            for _ in range(1 << 40):  # bounded by the deadline
                now = time.monotonic()
                if now >= deadline:
                    break
                if now >= next_sample:
                    res.samples.append(res.sent - at_sample)
                    at_sample = res.sent
                    next_sample += SAMPLE_S
                s.sendall(view[off : off + CHUNK])
                res.sent += CHUNK
                off = (off + CHUNK) % PERIOD
            res.ended = time.monotonic()
            res.samples.append(res.sent - at_sample)
            if isinstance(s, TlsStream):
                s.shutdown_write()
            else:
                s.shutdown(socket.SHUT_WR)
            verdict = _recv_exact(s, VERDICT.size, "verdict")
            res.received_by_sink, res.first_bad = VERDICT.unpack(verdict)
    except (OSError, EOFError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        res.ended = res.ended or time.monotonic()
    res.cpu_s = time.process_time() - cpu0
    return res


def sender_process_main(
    host: str,
    port: int,
    seed: int,
    start_at: float,
    duration_s: float,
    ctl: Connection,
    tls_ca: str | None = None,
) -> None:
    """Entry point of a sender process: one stream, one StreamResult."""
    ctl.send(send_stream(host, port, seed, start_at, duration_s, tls_ca))


def run_streams(
    host: str,
    port: int,
    streams: int,
    duration_s: float,
    seed_base: int,
    start_delay_s: float = 0.3,
    tls_ca: str | None = None,
) -> list[StreamResult]:
    """streams sender processes at once (blocking: call from an executor
    thread when an event loop must keep running)."""
    ctx = mp.get_context("spawn")
    start_at = time.monotonic() + start_delay_s + 0.2 * min(streams, MAX_STREAMS)
    procs: list[tuple[mp.process.BaseProcess, Connection]] = []
    try:
        for i in range(min(streams, MAX_STREAMS)):
            parent_end, child_end = ctx.Pipe()
            sender = ctx.Process(
                target=sender_process_main,
                args=(host, port, seed_base + i, start_at, duration_s, child_end, tls_ca),
                name=f"skiff-bench-bulk-{i}",
                daemon=True,
            )
            sender.start()
            child_end.close()
            procs.append((sender, parent_end))
        out: list[StreamResult] = []
        limit = time.monotonic() + start_delay_s + 0.2 * streams + duration_s + VERDICT_TIMEOUT_S
        for i, (_proc, c) in enumerate(procs):
            if c.poll(max(0.0, limit - time.monotonic())):
                r = c.recv()
                assert isinstance(r, StreamResult)
                out.append(r)
            else:
                out.append(StreamResult(seed_base + i, error="sender gave no result in time"))
        return out
    finally:
        for p, c in procs:
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join(STOP_TIMEOUT_S)
            c.close()


@dataclass(slots=True)
class BulkFigures:
    """Several streams of one run, combined."""

    streams: int
    bytes: int
    elapsed_s: float
    failures: list[str]
    sender_cpu_s: float
    timeline_bytes: list[int]

    @property
    def gbit_s(self) -> float:
        return self.bytes * 8 / self.elapsed_s / 1e9 if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @classmethod
    def of(cls, results: list[StreamResult]) -> BulkFigures:
        started = min((r.started for r in results if r.started), default=0.0)
        ended = max((r.ended for r in results), default=0.0)
        width = max((len(r.samples) for r in results), default=0)
        timeline = [sum(r.samples[i] for r in results if i < len(r.samples)) for i in range(width)]
        failures = [f"stream {r.seed}: {f}" for r in results if (f := r.failure()) is not None]
        return cls(
            streams=len(results),
            bytes=sum(r.received_by_sink for r in results if r.ok),
            elapsed_s=max(0.0, ended - started),
            failures=failures,
            sender_cpu_s=sum(r.cpu_s for r in results),
            timeline_bytes=timeline,
        )
