"""minrelay, the simplest correct C relay, as a subject: the physical limit.

Why it is beside HAProxy in ``compare``: a ratio against a proxy tells how
Skiff stands among products; a ratio against a ~190-line epoll relay that
does nothing else (with ``-s``: splice through a pipe) tells how far Skiff
is from what the kernel allows on this machine, measured in the same run.

Why built at run time: its source lives outside the repository
(``../shared/minrelay/`` beside the clone, read-only in CI). The bench
compiles it with gcc into a temporary directory and deletes it afterwards;
neither the code nor the binary is ever kept in the repository. Without the
source or gcc the subject is skipped and the reason is printed.

Why a pair of processes: minrelay relays one listening port to one target,
and a compare subject relays two (the echo server and the bulk sink), so a
subject is two minrelay processes whose CPU and memory are added.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.host import read_process_cpu_s, read_threads_cpu_s
from bench.proxies import READY_TIMEOUT_S, STOP_TIMEOUT_S, free_port, read_rss_kib, wait_listening

SOURCE_ENV = "SKIFF_MINRELAY_SRC"
BUILD_TIMEOUT_S = 120.0
NAMES = ("minrelay", "minrelay-splice")


class MinrelayUnavailable(RuntimeError):
    """The source or the compiler is missing, or the build failed: the
    message says which, and is the subject's skip reason."""


def default_source() -> Path:
    """$SKIFF_MINRELAY_SRC, else ``../shared/minrelay/minrelay.c`` from the
    repository root (the layout of the workspace and of CI)."""
    env = os.environ.get(SOURCE_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "minrelay" / "minrelay.c"


def build(out_dir: Path, source: Path | None = None) -> Path:
    """Compiles minrelay into out_dir; returns the binary's path."""
    src = source if source is not None else default_source()
    if not src.is_file():
        raise MinrelayUnavailable(
            f"minrelay source not found at {src} (set {SOURCE_ENV} to minrelay.c)"
        )
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise MinrelayUnavailable("no C compiler (gcc or cc) to build minrelay")
    binary = out_dir / "minrelay"
    r = subprocess.run(
        [gcc, "-O2", "-pthread", "-o", str(binary), str(src)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if r.returncode != 0 or not binary.is_file():
        raise MinrelayUnavailable(f"building minrelay failed: {r.stderr.strip()[-400:]}")
    return binary


@dataclass
class MinrelayPair:
    """Two minrelay processes: echo_port -> echo and sink_port -> sink."""

    name: str
    procs: list[subprocess.Popen[bytes]]
    echo_port: int
    sink_port: int
    workdir: Path
    version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.echo_port)

    @property
    def memory_source(self) -> str:
        pids = "+".join(str(p.pid) for p in self.procs)
        return f"/proc/{{{pids}}}/status VmRSS (echo and sink relays added)"

    def cpu_s(self) -> float:
        """Read like every other subject process (schedstat, else ticks)."""
        total = 0.0
        for p in self.procs:
            ns = read_threads_cpu_s(p.pid)
            total += ns if ns is not None else read_process_cpu_s(p.pid)
        return total

    def rss_kib(self) -> int:
        return sum(read_rss_kib(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    binary: Path,
    threads: int,
    echo: tuple[str, int],
    sink: tuple[str, int],
    splice: bool = False,
) -> MinrelayPair:
    """``minrelay [-s] PORT HOST PORT THREADS`` for the echo and the sink."""
    workdir = Path(tempfile.mkdtemp(prefix="skiff-bench-minrelay-"))
    name = NAMES[1] if splice else NAMES[0]
    pair = MinrelayPair(name, [], free_port(), free_port(), workdir, version="minrelay.c")
    try:
        for port, (host, target_port) in ((pair.echo_port, echo), (pair.sink_port, sink)):
            cmd = [str(binary), *(["-s"] if splice else []), str(port), host, str(target_port)]
            cmd.append(str(threads))
            with (workdir / f"relay-{port}.log").open("wb") as out:
                pair.procs.append(
                    subprocess.Popen(
                        cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                    )
                )
            wait_listening([port], pair.procs[-1], READY_TIMEOUT_S)
    except BaseException as exc:
        logs = " ".join(p.read_text(errors="replace") for p in workdir.glob("*.log"))
        pair.stop()
        if isinstance(exc, RuntimeError):
            raise RuntimeError(f"{name}: {exc} {logs.strip()}") from exc
        raise
    return pair
