"""Logging in the Skupper router's line shape, on top of the stdlib.

Operators grep Skupper logs by ``MODULE (level)``, so Skiff writes the same
shape::

    2026-11-21 10:00:00.123456 +0000 TCP_ADAPTOR (info) text

Each module is a stdlib logger (``skiff.<MODULE>``) so that third-party code
and tests can use ordinary ``logging`` tools.  Skupper's ``enable`` syntax
allows level sets with holes (``debug,error``), which a stdlib threshold
cannot express, so a filter checks the set while the logger level keeps
``isEnabledFor`` cheap for the common case.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import queue
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from router.configs import LogConfig
from router.schema import (
    LOG_LEVELS,
    LOG_MODULES,
    EnableSpec,
    InvalidValue,
    did_you_mean,
    parse_enable,
)

TRACE = 5
NOTICE = 25

LEVEL_NUMBERS: Mapping[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_LEVEL_NAMES = {number: name for name, number in LEVEL_NUMBERS.items()}

logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(NOTICE, "NOTICE")

LOGGER_PREFIX = "skiff."

__all__ = [
    "LEVEL_NUMBERS",
    "LOG_LEVELS",
    "LOG_MODULES",
    "NOTICE",
    "TRACE",
    "EnableSpec",
    "LogConfigObserver",
    "SkupperFormatter",
    "configure_log",
    "format_timestamp",
    "get_logger",
    "is_enabled",
    "parse_enable",
    "reset_logging",
]


def format_timestamp(created: float) -> str:
    """Local time with UTC offset and microseconds, as Skupper prints it."""
    moment = datetime.datetime.fromtimestamp(created).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f %z")


def _level_name(levelno: int) -> str:
    if levelno in _LEVEL_NAMES:
        return _LEVEL_NAMES[levelno]
    # Foreign levels (e.g. 15) are shown as the next Skupper level below.
    below = [n for n in _LEVEL_NAMES if n <= levelno]
    return _LEVEL_NAMES[max(below)] if below else "trace"


def _module_of(record: logging.LogRecord) -> str:
    name = record.name
    return name.removeprefix(LOGGER_PREFIX)


class SkupperFormatter(logging.Formatter):
    def __init__(self, include_timestamp: bool = True) -> None:
        super().__init__()
        self.include_timestamp = include_timestamp

    def format(self, record: logging.LogRecord) -> str:
        text = f"{_module_of(record)} ({_level_name(record.levelno)}) {record.getMessage()}"
        if self.include_timestamp:
            text = f"{format_timestamp(record.created)} {text}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now, so redirection keeps working."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _LogWriter(threading.Thread):
    """Writes formatted lines for the daemon, so a slow disk or a full pipe
    never stalls the control loop. Bounded: when it falls that far behind,
    lines are dropped and counted rather than the loop made to wait."""

    def __init__(self, limit: int = 10000) -> None:
        super().__init__(name="skiff-log-writer", daemon=True)
        self.queue: queue.Queue[tuple[logging.Handler, str] | None] = queue.Queue(limit)
        self.dropped = 0

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            handler, text = item
            stream = sys.stderr if isinstance(handler, _StderrHandler) else handler.stream  # type: ignore[attr-defined]
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):
                self.dropped += 1  # nowhere left to report it

    def stop(self, timeout: float = 2.0) -> None:
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.join(timeout)


class _Deferred(logging.Handler):
    """Formats on the caller's thread (arguments are read now), writes on
    the log writer thread."""

    def __init__(self, target: logging.Handler, writer: _LogWriter) -> None:
        super().__init__()
        self.target = target
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.queue.put_nowait((self.target, self.target.format(record)))
        except queue.Full:
            self.writer.dropped += 1

    def close(self) -> None:
        self.target.close()
        super().close()


_writer: _LogWriter | None = None


def start_background_writer() -> None:
    """From now on log lines are written by a thread of their own (skiffd
    calls this; the library default stays synchronous, which tests rely on)."""
    global _writer
    if _writer is not None:
        return
    _writer = _LogWriter()
    _writer.start()
    atexit.register(_writer.stop)
    for module, state in _states.items():
        logger = logging.getLogger(LOGGER_PREFIX + module)
        logger.removeHandler(state.handler)
        state.handler = _Deferred(state.handler, _writer)
        logger.addHandler(state.handler)


@dataclass
class _ModuleState:
    enable: EnableSpec
    enable_text: str
    output_file: str | None
    include_timestamp: bool
    handler: logging.Handler


class _EnableFilter(logging.Filter):
    def __init__(self, module: str) -> None:
        super().__init__()
        self.module = module

    def filter(self, record: logging.LogRecord) -> bool:
        return _level_name(record.levelno) in _effective_levels(self.module)


_states: dict[str, _ModuleState] = {}


def _check_module(module: str) -> None:
    if module not in LOG_MODULES:
        raise InvalidValue(
            "log attribute 'module' has invalid value "
            f"{module!r}{did_you_mean(module, LOG_MODULES)}: "
            f"expected one of {', '.join(LOG_MODULES)}",
            entity_type="log",
            attribute="module",
            value=module,
        )


def _effective_levels(module: str) -> frozenset[str]:
    state = _states.get(module)
    if state is None or state.enable.levels is None:
        default = _states.get("DEFAULT")
        if default is None or default.enable.levels is None:
            return frozenset(LOG_LEVELS[LOG_LEVELS.index("info") :])
        return default.enable.levels
    return state.enable.levels


def _refresh_level(module: str) -> None:
    levels = _effective_levels(module)
    logger = logging.getLogger(LOGGER_PREFIX + module)
    if levels:
        logger.setLevel(min(LEVEL_NUMBERS[name] for name in levels))
    else:
        logger.setLevel(logging.CRITICAL + 1)


def _make_handler(output_file: str | None, include_timestamp: bool) -> logging.Handler:
    handler: logging.Handler
    if output_file:
        try:
            handler = logging.FileHandler(output_file, mode="a", encoding="utf-8")
        except OSError as e:
            raise InvalidValue(
                f"log attribute 'outputFile' cannot be opened: {output_file!r}: {e.strerror or e}",
                entity_type="log",
                attribute="outputFile",
                value=output_file,
            ) from None
    else:
        handler = _StderrHandler()
    handler.setFormatter(SkupperFormatter(include_timestamp))
    return handler


def configure_log(
    module: str,
    enable: str | None = None,
    output_file: str | None = None,
    include_timestamp: bool = True,
) -> None:
    """Applies one ``log`` entity; all arguments replace the previous ones.

    ``enable=None`` means the schema default: ``info+`` for DEFAULT and
    ``default`` (follow DEFAULT) for every other module.  Nothing changes
    when the enable string or the output file is bad.
    """
    _check_module(module)
    text = enable if enable is not None else ("info+" if module == "DEFAULT" else "default")
    spec = parse_enable(text)
    if module == "DEFAULT" and spec.inherits:
        raise InvalidValue(
            "log attribute 'enable' of module DEFAULT cannot be 'default': expected levels such "
            "as 'info+'",
            entity_type="log",
            attribute="enable",
            value=text,
        )
    handler = _make_handler(output_file, include_timestamp)
    if _writer is not None:
        handler = _Deferred(handler, _writer)
    logger = logging.getLogger(LOGGER_PREFIX + module)
    old = _states.get(module)
    if old is not None:
        logger.removeHandler(old.handler)
        old.handler.close()
    else:
        logger.propagate = False
        logger.addFilter(_EnableFilter(module))
    logger.addHandler(handler)
    _states[module] = _ModuleState(spec, text, output_file, include_timestamp, handler)
    targets = LOG_MODULES if module == "DEFAULT" else (module,)
    for name in targets:
        if name in _states:
            _refresh_level(name)


def get_logger(module: str) -> logging.Logger:
    """Logger of ``module``, configured with the defaults on first use."""
    _check_module(module)
    if "DEFAULT" not in _states:
        configure_log("DEFAULT")
    if module not in _states:
        configure_log(module)
    return logging.getLogger(LOGGER_PREFIX + module)


def is_enabled(module: str, level: str) -> bool:
    return level in _effective_levels(module)


def reset_logging() -> None:
    """Forgets all module configuration; for tests and re-initialisation."""
    for module, state in list(_states.items()):
        logger = logging.getLogger(LOGGER_PREFIX + module)
        logger.removeHandler(state.handler)
        state.handler.close()
        for f in list(logger.filters):
            logger.removeFilter(f)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    _states.clear()


class _HasAttributes(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def attributes(self) -> dict[str, object]: ...


class LogConfigObserver:
    """Registry observer applying ``log`` entities to the loggers.

    Raising from ``on_update`` makes the registry roll the change back, so a
    bad ``outputFile`` never leaves the entity and the loggers disagreeing.
    """

    def on_create(self, entity: _HasAttributes) -> None:
        self._apply(entity)

    def on_update(self, old: _HasAttributes, new: _HasAttributes) -> None:
        self._apply(new)

    def on_delete(self, entity: _HasAttributes) -> None:
        configure_log(LogConfig.from_values(entity.name, entity.attributes).module)

    def _apply(self, entity: _HasAttributes) -> None:
        cfg = LogConfig.from_values(entity.name, entity.attributes)
        configure_log(cfg.module, cfg.enable, cfg.output_file, cfg.include_timestamp)
