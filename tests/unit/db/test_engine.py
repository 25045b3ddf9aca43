"""A PostgreSQL host that accepts connections and never answers must not hang the caller."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shipyard.db import engine as engine_module
from shipyard.db.engine import make_engine


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def _time_to_fail(url: str) -> float:
    engine = make_engine(url)
    started = time.monotonic()
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    engine.dispose()
    return time.monotonic() - started


def test_default_connect_timeout_applies(silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "CONNECT_TIMEOUT_SECONDS", 1)
    assert 0.5 < _time_to_fail(f"postgresql://nobody@127.0.0.1:{silent_port}/shipyard") < 5


def test_url_connect_timeout_wins(silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "CONNECT_TIMEOUT_SECONDS", 60)
    url = f"postgresql://nobody@127.0.0.1:{silent_port}/shipyard?connect_timeout=1"
    assert 0.5 < _time_to_fail(url) < 5
