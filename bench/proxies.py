"""Proxies started as processes of their own: skiffd and HAProxy.

Why real processes with generated configurations: a comparison is only
honest when each proxy runs as it would in production, and its cost is read
from its own process accounting (/proc/<pid>/stat utime+stime, VmRSS), the
same way for every proxy. Each proxy relays two ports: one to the bench's
echo server (storm, idle) and one to its verifying sink (bulk).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.host import read_process_cpu_s, read_threads_cpu_s
from bench.pki import TlsFiles

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
HAPROXY_MISSING = "haproxy not found: install it with `apt-get install haproxy`"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out (closed again: a small race, loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def wait_listening(ports: list[int], proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Returns once every port accepts a connection; raises if proc exits first."""
    deadline = time.monotonic() + timeout_s
    pending = list(ports)
    for _ in range(int(timeout_s / 0.02) + 1):
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        for p in list(pending):
            try:
                with socket.create_connection(("127.0.0.1", p), timeout=0.5):
                    pending.remove(p)
            except OSError:
                pass  # not yet
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if pending:
        raise RuntimeError(f"ports {pending} not listening within {timeout_s:.0f} s")


@dataclass
class ProxyProcess:
    """A running proxy: its ports (echo, sink) and its process accounting."""

    name: str
    proc: subprocess.Popen[bytes]
    echo_port: int
    sink_port: int
    workdir: Path
    log_path: Path
    version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.echo_port)

    def cpu_s(self) -> float:
        """Every subject process is read the same way: schedstat (ns) of its
        threads, or /proc/<pid>/stat ticks where schedstat is missing."""
        ns = read_threads_cpu_s(self.pid)
        return ns if ns is not None else read_process_cpu_s(self.pid)

    @property
    def memory_source(self) -> str:
        return f"/proc/{self.pid}/status VmRSS"

    def rss_kib(self) -> int:
        return read_rss_kib(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.workdir, ignore_errors=True)


def skiffd_config(
    workers: int,
    echo: tuple[str, int],
    sink: tuple[str, int],
    echo_port: int,
    sink_port: int,
    tls: TlsFiles | None = None,
    tls_resumption: str | None = None,
    worker_nice: int | None = None,
) -> str:
    """A skrouterd.conf relaying echo_port -> echo and sink_port -> sink
    (with tls: both listeners terminate TLS with one sslProfile, and
    tls_resumption, when given, is their tlsResumption; worker_nice, when
    given, the router's workerNice)."""
    profile = ""
    use = ""
    nice = "" if worker_nice is None else f"\n    workerNice: {worker_nice}"
    if tls is not None:
        profile = f"""
sslProfile {{
    name: bench-tls
    certFile: {tls.cert}
    privateKeyFile: {tls.key}
    caCertFile: {tls.ca}
}}
"""
        use = "\n    sslProfile: bench-tls"
        if tls_resumption is not None:
            use += f"\n    tlsResumption: {tls_resumption}"

    def relay(name: str, port: int, target: tuple[str, int]) -> str:
        return f"""
tcpListener {{
    name: {name}
    host: 127.0.0.1
    port: {port}
    address: {name}
    backlog: 4096{use}
}}

tcpConnector {{
    name: {name}
    host: {target[0]}
    port: {target[1]}
    address: {name}
}}
"""

    return (
        f"""# generated by skiff-bench
router {{
    id: skiff-bench
    workerThreads: {workers}{nice}
}}

log {{
    module: DEFAULT
    enable: warning+
}}
{profile}"""
        + relay("bench-echo", echo_port, echo)
        + relay("bench-sink", sink_port, sink)
    )


def start_skiffd(
    workers: int,
    echo: tuple[str, int],
    sink: tuple[str, int],
    tls: TlsFiles | None = None,
    name: str = "skiffd",
    pythonpath: str | None = None,
    tls_resumption: str | None = None,
    worker_nice: int | None = None,
) -> ProxyProcess:
    """`python -m router -c <generated>` with workerThreads = workers;
    pythonpath: another build's tree (its router/ with its own _native) first."""
    workdir = Path(tempfile.mkdtemp(prefix="skiff-bench-skiffd-"))
    echo_port, sink_port = free_port(), free_port()
    conf = workdir / "skiffd.conf"
    conf.write_text(
        skiffd_config(workers, echo, sink, echo_port, sink_port, tls, tls_resumption, worker_nice)
    )
    log = workdir / "skiffd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "-c", str(conf)],
            env=dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None,
            # `-m` puts the working directory first on sys.path: run another
            # build's tree from elsewhere, or this checkout's router/ shadows it
            cwd=workdir if pythonpath else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    pp = ProxyProcess(name, proc, echo_port, sink_port, workdir, log)
    try:
        wait_listening([echo_port, sink_port], proc, READY_TIMEOUT_S)
    except RuntimeError as exc:
        tail = pp.log_tail()
        pp.stop()
        raise RuntimeError(f"skiffd: {exc}\n{tail}") from exc
    pp.extra["config"] = conf.name
    return pp


def haproxy_maxconn() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    return max(1000, min(200_000, (limit - 200) // 2))


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


def haproxy_config(
    threads: int,
    echo: tuple[str, int],
    sink: tuple[str, int],
    echo_port: int,
    sink_port: int,
    tls: TlsFiles | None = None,
) -> str:
    """mode tcp, nbthread = threads, no logging, generous limits and timeouts
    (maxconn fits the hard file-descriptor limit: two sockets per connection).
    With tls, both binds terminate TLS with the same certificate as skiffd's
    and no session tickets (every connection a full handshake)."""
    maxconn = haproxy_maxconn()
    ssl = f" ssl crt {tls.combined} no-tls-tickets" if tls is not None else ""
    return f"""# generated by skiff-bench
global
    nbthread {threads}
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    maxconn {maxconn}

frontend bench_echo
    bind 127.0.0.1:{echo_port} backlog 4096{ssl}
    default_backend bench_echo

backend bench_echo
    server echo {echo[0]}:{echo[1]}

frontend bench_sink
    bind 127.0.0.1:{sink_port} backlog 4096{ssl}
    default_backend bench_sink

backend bench_sink
    server sink {sink[0]}:{sink[1]}
"""


# OpenSSL configuration for a HAProxy that sends no session ticket at all.
# HAProxy 2.6's no-tls-tickets turns off the stateless tickets only: it still
# sends two stateful TLS 1.3 tickets per handshake (session ids into its
# cache), and it has no setting for their number. OpenSSL applies the SSL_CONF
# commands of its system_default section to every SSL_CTX it creates, and
# NumTickets = 0 sends none. This file replaces the system's openssl.cnf for
# that process only (Debian's sets no ssl_conf, so nothing else changes there).
NO_TICKETS_OPENSSL_CNF = """# generated by skiff-bench: no TLS 1.3 session tickets
openssl_conf = skiff_bench_init

[skiff_bench_init]
ssl_conf = skiff_bench_ssl

[skiff_bench_ssl]
system_default = skiff_bench_tls

[skiff_bench_tls]
NumTickets = 0
"""


def start_haproxy(
    threads: int,
    echo: tuple[str, int],
    sink: tuple[str, int],
    tls: TlsFiles | None = None,
    no_tickets: bool = False,
) -> ProxyProcess:
    """HAProxy in the foreground (-db) on a generated configuration;
    no_tickets (with tls): no session ticket at all (NO_TICKETS_OPENSSL_CNF)."""
    binary = haproxy_binary()
    if binary is None:
        raise FileNotFoundError(HAPROXY_MISSING)
    workdir = Path(tempfile.mkdtemp(prefix="skiff-bench-haproxy-"))
    echo_port, sink_port = free_port(), free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(haproxy_config(threads, echo, sink, echo_port, sink_port, tls))
    env = None
    if no_tickets and tls is not None:
        cnf = workdir / "openssl.cnf"
        cnf.write_text(NO_TICKETS_OPENSSL_CNF)
        env = dict(os.environ, OPENSSL_CONF=str(cnf))
    version = subprocess.run(
        [binary, "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.splitlines()
    log = workdir / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    pp = ProxyProcess(
        "haproxy", proc, echo_port, sink_port, workdir, log, version=version[0] if version else ""
    )
    try:
        wait_listening([echo_port, sink_port], proc, READY_TIMEOUT_S)
    except RuntimeError as exc:
        tail = pp.log_tail()
        pp.stop()
        raise RuntimeError(f"haproxy: {exc}\n{tail}") from exc
    return pp
