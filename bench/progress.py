"""Live progress: a rich display on a terminal, plain lines otherwise.

Why both: a person watching a long run wants to see the rate, errors and
latency as they happen; a log file or CI job wants one line per event, not
cursor movements. Everything is called on the bench's event loop thread.
"""

from __future__ import annotations

import io
import sys
import time
from types import TracebackType
from typing import Any, TextIO

from bench.storm import TimelinePoint

PLAIN_TICK_EVERY_S = 2.0


class Progress:
    """What the benches report while they run."""

    def __init__(self, live: bool, out: TextIO | None = None) -> None:
        self.live = live
        self.out = out or sys.stdout
        self.t0 = time.monotonic()
        self.label = ""
        self.last: TimelinePoint | None = None
        self.last_plain = 0.0
        self._live: Any = None
        self._console: Any = None

    @classmethod
    def auto(cls, quiet: bool = False) -> Progress:
        """rich on a TTY, plain lines otherwise (quiet: results only)."""
        if quiet:
            return cls(False, out=io.StringIO())
        return cls(sys.stdout.isatty())

    @classmethod
    def plain(cls) -> Progress:
        return cls(False)

    def __enter__(self) -> Progress:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.out)
            self._live = Live(
                self._render(), console=self._console, refresh_per_second=4, transient=True
            )
            self._live.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(et, ev, tb)
            self._live = None

    # ----------------------------------------------------------------- events

    def phase(self, label: str) -> None:
        self.label = label
        self.last = None
        self._update()

    def result(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line)
        else:
            print(line, file=self.out, flush=True)

    def storm_tick(self, point: TimelinePoint) -> None:
        self.last = point
        now = time.monotonic()
        if self._live is not None:
            self._update()
        elif now - self.last_plain >= PLAIN_TICK_EVERY_S:
            self.last_plain = now
            print(f"  {self.label}: {self._figures()}", file=self.out, flush=True)

    def bulk_tick(self, text: str) -> None:
        if self._live is None:
            print(f"  {self.label}: {text}", file=self.out, flush=True)

    # ----------------------------------------------------------------- drawing

    def _figures(self) -> str:
        p = self.last
        if p is None:
            return "starting"
        return (
            f"t={p.t_s:4.1f}s {p.ok / 0.5:>9,.0f} conn/s  ok {p.total_ok:,}  "
            f"errors {p.total_failed:,}  p50 {p.latency_ns.quantile(0.5) / 1e6:.2f} ms  "
            f"p99 {p.latency_ns.quantile(0.99) / 1e6:.2f} ms"
        )

    def _render(self) -> Any:
        from rich.table import Table

        t = Table.grid(padding=(0, 2))
        t.add_row(
            f"[bold]{self.label or 'starting'}[/bold]",
            f"elapsed {time.monotonic() - self.t0:6.1f} s",
        )
        t.add_row("", self._figures())
        return t

    def _update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
        elif self.label:
            print(f"{self.label} …", file=self.out, flush=True)
