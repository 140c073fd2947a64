"""Runs skiffd as a subprocess for system tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from servers import wait_for


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Skiffd:
    """A skiffd process on a configuration file; stdout/stderr go to files."""

    def __init__(self, tmp: Path, config: str, name: str = "skiffd.conf") -> None:
        self.config_path = tmp / name
        self.config_path.write_text(config)
        self.out_path = tmp / "skiffd.out"
        self.err_path = tmp / "skiffd.err"
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "-c", str(self.config_path)],
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_for(
            lambda: "Stop with Ctrl-C" in self.stdout() or self.proc.poll() is not None,
            timeout=30,
            what="skiffd to start",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"skiffd exited {self.proc.returncode}: {self.stderr()}")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def rewrite(self, config: str) -> None:
        self.config_path.write_text(config)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def reload(self, expect: str) -> None:
        """SIGHUP, then waits for the log line that reports the outcome."""
        before = self.stderr().count(expect)
        self.signal(signal.SIGHUP)
        wait_for(lambda: self.stderr().count(expect) > before, what=f"log line {expect!r}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._out.close()
            self._err.close()
        return rc


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False


def wait_listening(port: int, up: bool = True) -> None:
    wait_for(lambda: listening(port) == up, what=f"port {port} {'up' if up else 'down'}")


def skiffd_conf(*entities: str, workers: int = 2, extra_router: str = "") -> str:
    head = f"router {{\n    id: test\n    workerThreads: {workers}\n{extra_router}}}\n"
    return head + "".join(entities)


def tcp_listener(
    port: int, address: str = "svc", name: str | None = None, backlog: int | None = None
) -> str:
    n = f"    name: {name}\n" if name else ""
    b = f"    backlog: {backlog}\n" if backlog else ""
    return (
        f"tcpListener {{\n{n}    host: 127.0.0.1\n    port: {port}\n    address: {address}\n"
        f"{b}}}\n"
    )


def tcp_connector(port: int, address: str = "svc", host: str = "127.0.0.1") -> str:
    return f"tcpConnector {{\n    host: {host}\n    port: {port}\n    address: {address}\n}}\n"


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    return proc.wait(1)
