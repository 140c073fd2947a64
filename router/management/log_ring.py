"""Recent log records in memory, for the management operation GET-LOG.

Skupper keeps its last log entries in a bounded list and answers GET-LOG
(``skstat --log``) from it; this is Skiff's equivalent: a logging handler on
every module logger that keeps the newest :data:`CAPACITY` records that were
actually logged (a module's ``enable`` filter runs first, as in Skupper).

Each entry is Skupper's six-element list: module, level, text, source file,
source line, time in whole seconds since the epoch.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from router.log import LEVEL_NUMBERS, LOG_MODULES, LOGGER_PREFIX

CAPACITY = 1000
"""Records kept; the oldest is dropped first.  About 200 KiB at most."""

_TEXT_MAX = 2048  # characters of one message kept (Skupper keeps 2 KiB too)

Entry = list[object]


def _level_name(levelno: int) -> str:
    below = [(number, name) for name, number in LEVEL_NUMBERS.items() if number <= levelno]
    return max(below)[1] if below else "trace"


class LogRing(logging.Handler):
    """The bounded ring; thread-safe (records may come from any thread)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(level=logging.NOTSET)
        self._entries: deque[Entry] = deque(maxlen=capacity)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a bad format must not lose the record
            text = str(record.msg)
        entry: Entry = [
            record.name.removeprefix(LOGGER_PREFIX),
            _level_name(record.levelno),
            text[:_TEXT_MAX],
            record.pathname or None,
            record.lineno if record.pathname else None,
            int(record.created),
        ]
        with self._guard:
            self._entries.append(entry)

    def recent(self, limit: int | None = None, level: str | None = None) -> list[Entry]:
        """Oldest first, the newest ``limit`` of them (all when None), only
        those at ``level`` or above when given."""
        with self._guard:
            entries = list(self._entries)
        if level is not None:
            floor = LEVEL_NUMBERS[level]
            entries = [e for e in entries if LEVEL_NUMBERS.get(str(e[1]), 0) >= floor]
        if limit is not None and limit >= 0:
            entries = entries[len(entries) - limit :] if limit else []
        return entries

    def clear(self) -> None:
        with self._guard:
            self._entries.clear()


_ring: LogRing | None = None
_install_guard = threading.Lock()


def install() -> LogRing:
    """The process's ring, attached to every module logger on first call."""
    global _ring
    with _install_guard:
        if _ring is None:
            _ring = LogRing()
            for module in LOG_MODULES:
                logging.getLogger(LOGGER_PREFIX + module).addHandler(_ring)
        return _ring
