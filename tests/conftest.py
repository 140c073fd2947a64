from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

from servers import ThreadedServer, echo

from router.engine import Engine, EngineOptions

# Fuzz tests explore new inputs on a developer's machine; CI (CI=true) replays
# a fixed sequence, so a landing never depends on what a random draw finds.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


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
