"""The process side: workers that inherit the socket, restarts, graceful shutdown, start-up failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.server.config import ServerConfig
from tests.server.conftest import Reader, request
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


class Supervised:
    def __init__(self, app: str, tmp_path: Path, **options: object) -> None:
        self.port = free_port()
        config = ServerConfig(app=app, port=self.port, **options)  # type: ignore[arg-type]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.log_path = tmp_path / f"serve-{self.port}.log"
        code = (
            "import logging, sys\n"
            "from shipyard.server import ServerConfig, serve\n"
            "logging.basicConfig(level='INFO')\n"
            f"sys.exit(serve(ServerConfig.from_json({config.to_json()!r})))\n"
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, target: str = "/", timeout: float = 10) -> dict[str, object]:
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request("GET", target, {"Connection": "close"}))
            document: dict[str, object] = json.loads(Reader(sock).response().body)
            return document

    def wait_serving(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                self.get(timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"not serving:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    yield started
    for server in started:
        server.stop()


def test_graceful_shutdown_finishes_the_request_in_flight(
    supervised: list[Supervised], tmp_path: Path
) -> None:
    import socket

    server = Supervised("tests.server.apps:echo", tmp_path)
    supervised.append(server)
    server.wait_serving()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as busy,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as idle,
    ):
        idle_reader = Reader(idle)
        idle.sendall(request("GET", "/idle"))
        assert idle_reader.response().status == 200  # now an idle keep-alive connection
        busy.sendall(request("GET", "/busy?sleep=1"))
        time.sleep(0.3)
        started = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)  # as tests/support/server.py stops servers
        response = Reader(busy).response()
        assert response.status == 200
        assert response.headers["connection"] == "close"
        assert json.loads(response.body)["path"] == "/busy"
        assert idle_reader.closed()
        assert server.process.wait(15) == 0
        assert time.monotonic() - started < 10
    with pytest.raises(OSError):
        server.get(timeout=1)


def test_a_worker_that_dies_is_replaced(supervised: list[Supervised], tmp_path: Path) -> None:
    server = Supervised("tests.server.apps:echo", tmp_path, workers=2)
    supervised.append(server)
    server.wait_serving()
    pids: set[int] = set()
    deadline = time.monotonic() + 10
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(int(server.get()["pid"]))  # type: ignore[call-overload]
    victim = pids.pop()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while f"pid {victim}) died" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen - pids) < 1 or victim in seen:
        assert time.monotonic() < deadline, server.log()
        seen.add(int(server.get()["pid"]))  # type: ignore[call-overload]
        assert victim not in seen
    assert server.process.poll() is None
    os.killpg(server.process.pid, signal.SIGTERM)
    assert server.process.wait(20) == 0


def test_failed_startup_ends_serve_with_an_error(supervised: list[Supervised], tmp_path: Path) -> None:
    server = Supervised("tests.server.apps:failing_startup", tmp_path)
    supervised.append(server)
    assert server.process.wait(30) == 1
    log = server.log()
    assert "the database is not there" in log
    assert "failed to start" in log


def test_workers_stop_when_the_supervisor_is_killed(supervised: list[Supervised], tmp_path: Path) -> None:
    server = Supervised("tests.server.apps:echo", tmp_path)
    supervised.append(server)
    server.wait_serving()
    worker = int(server.get()["pid"])  # type: ignore[call-overload]
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{worker}").exists() and _state(worker) != "Z":
        assert time.monotonic() < deadline, "the orphaned worker kept running"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_the_banner_is_printed_once_after_all_workers_serve(
    supervised: list[Supervised], tmp_path: Path
) -> None:
    banner = "Shipyard banner for the test"
    server = Supervised("tests.server.apps:echo", tmp_path, workers=2, banner=banner)
    supervised.append(server)
    server.wait_serving()
    deadline = time.monotonic() + 10
    while banner not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    victim = int(server.get()["pid"])  # type: ignore[call-overload]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while f"pid {victim}) died" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    server.wait_serving()
    time.sleep(0.5)
    assert server.log().count(banner) == 1  # not again for the new worker


def test_no_banner_when_the_workers_fail_to_start(supervised: list[Supervised], tmp_path: Path) -> None:
    server = Supervised("tests.server.apps:failing_startup", tmp_path, banner="never shown")
    supervised.append(server)
    assert server.process.wait(30) == 1
    assert "never shown" not in server.log()


def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(
    supervised: list[Supervised], tmp_path: Path
) -> None:
    server = Supervised("tests.server.apps:echo", tmp_path)
    supervised.append(server)
    delays = []
    for _ in range(3):
        server.wait_serving()
        victim = int(server.get()["pid"])  # type: ignore[call-overload]
        died_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = died_at + 20
        while f"pid {victim}) died" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        server.wait_serving()
        delays.append(time.monotonic() - died_at)
    log = server.log()
    assert "starting a new one in 0.5 s" in log
    assert "starting a new one in 1.0 s" in log
    assert "starting a new one in 2.0 s" in log
    assert delays[2] >= 2.0 > delays[0], delays
    assert server.process.poll() is None


# a companion that says when it starts, when SIGTERM stops it, and when its lifeline reaches end of file
COMPANION = """
import os, select, signal, sys
trace, lifeline = sys.argv[1], int(sys.argv[sys.argv.index("--lifeline-fd") + 1])
def say(what):
    with open(trace, "a") as f:
        f.write(f"{what} {os.getpid()}\\n")
def stopped(signum, frame):
    say("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
say("started")
while True:
    select.select([lifeline], [], [])
    try:
        if not os.read(lifeline, 1):
            break
    except BlockingIOError:
        continue
say("orphaned")
"""


def _trace_lines(trace: Path, count: int, timeout: float = 20) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line.split() for line in trace.read_text().splitlines()] if trace.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} lines in {trace}")


def test_a_companion_is_restarted_when_it_dies_and_stopped_with_the_server(
    supervised: list[Supervised], tmp_path: Path
) -> None:
    trace = tmp_path / "companion"
    server = Supervised(
        "tests.server.apps:echo", tmp_path, companions=((sys.executable, "-c", COMPANION, str(trace)),)
    )
    supervised.append(server)
    server.wait_serving()
    [(event, first)] = _trace_lines(trace, 1)
    assert event == "started"
    os.kill(int(first), signal.SIGKILL)
    second = _trace_lines(trace, 2)[1]
    assert second[0] == "started" and second[1] != first
    assert "companion 1" in server.log() and "died" in server.log()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
    assert _trace_lines(trace, 3)[2] == ["stopped", second[1]]


def test_a_companion_stops_when_the_supervisor_is_killed(
    supervised: list[Supervised], tmp_path: Path
) -> None:
    trace = tmp_path / "companion"
    server = Supervised(
        "tests.server.apps:echo", tmp_path, companions=((sys.executable, "-c", COMPANION, str(trace)),)
    )
    supervised.append(server)
    server.wait_serving()
    [(_, pid)] = _trace_lines(trace, 1)
    os.kill(server.process.pid, signal.SIGKILL)
    assert _trace_lines(trace, 2)[1] == ["orphaned", pid]
