from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import ThreadedServer, echo

from router.engine import Engine, EngineOptions


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine(EngineOptions(worker_threads=2, connect_timeout_ms=2000, backoff_initial_ms=200))
    yield eng
    eng.stop()


@pytest.fixture
def echo_server() -> Iterator[ThreadedServer]:
    srv = ThreadedServer(echo)
    yield srv
    srv.close()
