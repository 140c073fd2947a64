from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from router import log
from router.registry import Entity
from router.schema import InvalidValue

LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6} [+-]\d{4} (?P<module>[A-Z_]+) "
    r"\((?P<level>[a-z]+)\) (?P<text>.*)$"
)


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    log.reset_logging()
    yield
    log.reset_logging()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_line_shape(tmp_path: Path) -> None:
    out = tmp_path / "router.log"
    log.configure_log("DEFAULT", "info+", str(out))
    log.configure_log("TCP_ADAPTOR", "default", str(out))
    log.get_logger("TCP_ADAPTOR").info("listener %s up", "front")
    (line,) = lines(out)
    match = LINE.match(line)
    assert match, line
    assert match["module"] == "TCP_ADAPTOR"
    assert match["level"] == "info"
    assert match["text"] == "listener front up"


def test_custom_levels_are_named_like_skupper(tmp_path: Path) -> None:
    out = tmp_path / "x.log"
    log.configure_log("ENGINE", "trace+", str(out), include_timestamp=False)
    logger = log.get_logger("ENGINE")
    logger.log(log.TRACE, "t")
    logger.log(log.NOTICE, "n")
    logger.critical("c")
    assert lines(out) == [
        "ENGINE (trace) t",
        "ENGINE (notice) n",
        "ENGINE (critical) c",
    ]


def test_enable_with_gaps_and_plus(tmp_path: Path) -> None:
    out = tmp_path / "x.log"
    log.configure_log("TLS", "debug,error+", str(out), include_timestamp=False)
    logger = log.get_logger("TLS")
    for level in ("trace", "debug", "info", "notice", "warning", "error", "critical"):
        logger.log(log.LEVEL_NUMBERS[level], level)
    assert lines(out) == [
        "TLS (debug) debug",
        "TLS (error) error",
        "TLS (critical) critical",
    ]
    assert log.is_enabled("TLS", "debug")
    assert not log.is_enabled("TLS", "info")


def test_none_disables_and_default_follows_default_module(tmp_path: Path) -> None:
    out = tmp_path / "x.log"
    log.configure_log("DEFAULT", "warning+", str(out), include_timestamp=False)
    log.configure_log("SERVER", "default", str(out), include_timestamp=False)
    log.configure_log("AGENT", "none", str(out), include_timestamp=False)
    server = log.get_logger("SERVER")
    server.info("hidden")
    server.warning("shown")
    log.get_logger("AGENT").critical("hidden too")
    assert not server.isEnabledFor(logging.INFO)
    # Changing DEFAULT changes the modules that follow it.
    log.configure_log("DEFAULT", "info+", str(out), include_timestamp=False)
    server.info("now shown")
    assert lines(out) == ["SERVER (warning) shown", "SERVER (info) now shown"]


def test_stderr_is_the_default_output(capsys: pytest.CaptureFixture[str]) -> None:
    log.get_logger("ROUTER").info("hello")
    err = capsys.readouterr().err.strip()
    assert LINE.match(err)
    assert err.endswith("ROUTER (info) hello")


def test_exceptions_are_appended(tmp_path: Path) -> None:
    out = tmp_path / "x.log"
    log.configure_log("AGENT", "info+", str(out), include_timestamp=False)
    try:
        raise ValueError("boom")
    except ValueError:
        log.get_logger("AGENT").exception("failed")
    text = out.read_text()
    assert text.startswith("AGENT (error) failed\nTraceback")
    assert "ValueError: boom" in text


def test_bad_enable_names_the_token() -> None:
    with pytest.raises(InvalidValue) as info:
        log.configure_log("TLS", "info,warnig+")
    assert "unknown level 'warnig+'" in str(info.value)
    assert "did you mean 'warning'" in str(info.value)


def test_default_module_cannot_inherit() -> None:
    with pytest.raises(InvalidValue, match="DEFAULT cannot be 'default'"):
        log.configure_log("DEFAULT", "default")


def test_unknown_module() -> None:
    with pytest.raises(InvalidValue, match="did you mean 'TCP_ADAPTOR'"):
        log.get_logger("TCP_ADAPTER")


def test_unopenable_output_file_keeps_previous_configuration(tmp_path: Path) -> None:
    out = tmp_path / "x.log"
    log.configure_log("TLS", "info+", str(out), include_timestamp=False)
    with pytest.raises(InvalidValue, match="'outputFile' cannot be opened"):
        log.configure_log("TLS", "debug+", str(tmp_path / "missing" / "x.log"))
    log.get_logger("TLS").info("still here")
    log.get_logger("TLS").debug("not enabled")
    assert lines(out) == ["TLS (info) still here"]


def test_log_config_observer_applies_entities(tmp_path: Path) -> None:
    out = tmp_path / "x.log"

    observer = log.LogConfigObserver()
    entity = Entity(
        "log",
        "FLOW_LOG",
        "log/1",
        {
            "module": "FLOW_LOG",
            "enable": "debug+",
            "outputFile": str(out),
            "includeTimestamp": False,
        },
        "config",
    )
    observer.on_update(entity, entity)
    log.get_logger("FLOW_LOG").debug("d")
    assert lines(out) == ["FLOW_LOG (debug) d"]


def test_background_writer_writes_off_the_calling_thread(capsys: object) -> None:
    """skiffd's mode: lines are formatted at the call and written by the
    writer thread, in order; nothing is lost when it is stopped."""
    import threading

    from router import log as skiff_log

    skiff_log.reset_logging()
    skiff_log.start_background_writer()
    writer = skiff_log._writer
    assert writer is not None and writer.is_alive()
    try:
        logger = skiff_log.get_logger("TCP_ADAPTOR")
        values = ["a", "b"]
        logger.info("first %s", values[0])
        values[0] = "changed"  # formatted at the call, not when written
        logger.info("second %s", values[1])
        assert threading.current_thread() is not writer
        writer.stop()
    finally:
        skiff_log._writer = None
        skiff_log.reset_logging()
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    lines = [line for line in err.splitlines() if "TCP_ADAPTOR" in line]
    assert [line.split(") ", 1)[1] for line in lines] == ["first a", "second b"]
