"""`shipyard serve` prepares the application (migrations, signing key, admin user), then execs into the
bare supervisor: the long-lived parent holds none of the application's memory."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shipyard import __version__
from shipyard.server.config import new_event_loop
from tests.support.server import start_server

PASSWORD = "serve-command-admin-password"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _server_workers(pid: int) -> list[int]:
    """The children that serve (the others are companions, such as the job worker)."""
    return [child for child in _children(pid) if b"shipyard.server.worker" in _cmdline(child)]


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_supervisor_is_the_same_process_without_the_application(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", auth=True, extra_env={"SHIPYARD_ADMIN_PASSWORD": PASSWORD})
    try:
        pid = server.process.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"shipyard.server" in cmdline, cmdline
        (worker,) = _server_workers(pid)
        # and the embedded job worker beside it
        (companion,) = set(_children(pid)) - {worker}
        assert _cmdline(companion)[1:4] == [b"-m", b"shipyard", b"worker"]
        # the worker runs the application (SQLite and all); the supervisor never imported it
        assert "_sqlite3" in _mapped(worker)
        assert "_sqlite3" not in _mapped(pid)
        assert _rss_mib(pid) < _rss_mib(worker) / 2, (_rss_mib(pid), _rss_mib(worker))
        # what was prepared before the exec is there: the database and the admin's signing key
        assert (tmp_path / "data" / "shipyard.db").is_file()
        request = urllib.request.Request(
            f"{server.url}/token?service=shipyard&scope=repository:admin/app:pull",
            headers={"Authorization": "Basic " + base64.b64encode(b"admin:" + PASSWORD.encode()).decode()},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read())["token"]
        assert f"Shipyard {__version__} on {server.url}" in server.log()
        os.killpg(pid, signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


@pytest.mark.parametrize(("setting", "uvloop"), [(None, True), ("asyncio", False)])
def test_the_workers_run_uvloop_unless_told_otherwise(
    tmp_path: Path, setting: str | None, uvloop: bool
) -> None:
    env = {} if setting is None else {"SHIPYARD_EVENT_LOOP": setting}
    server = start_server(tmp_path / "data", extra_env=env)
    try:
        (worker,) = _server_workers(server.process.pid)
        assert ("/uvloop/loop." in _mapped(worker)) is uvloop  # its compiled module
        with urllib.request.urlopen(f"{server.url}/v2/", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


def test_an_unknown_event_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="none of auto, uvloop, asyncio"):
        new_event_loop("trio")
    loop = new_event_loop("asyncio")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_serve_passes_the_server_settings_on(tmp_path: Path) -> None:
    """Through real `shipyard serve`: trusted proxies, the JSON access log, request ids."""
    server = start_server(
        tmp_path / "data",
        extra_env={
            "SHIPYARD_FORWARDED_ALLOW_IPS": "127.0.0.0/8",
            "SHIPYARD_LOG_FORMAT": "json",
            "SHIPYARD_ACCESS_LOG": "true",
        },
    )
    try:
        request = urllib.request.Request(
            f"{server.url}/v2/", headers={"X-Forwarded-For": "198.51.100.9", "X-Request-ID": "serve-test-1"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["X-Request-ID"] == "serve-test-1"
        lines = [line for line in server.log().splitlines() if "serve-test-1" in line]
        for _ in range(50):
            if lines:
                break
            time.sleep(0.1)
            lines = [line for line in server.log().splitlines() if "serve-test-1" in line]
        (line,) = lines
        document = json.loads(line[line.index("{") :])
        assert document["client"] == "198.51.100.9"
        assert document["method"] == "GET"
        assert document["status"] == 200
    finally:
        server.stop()


def test_the_banner_comes_once_after_the_port_is_bound_and_keeps_the_password_private(
    tmp_path: Path,
) -> None:
    """First start with a generated password: the supervisor prints it once every worker serves; it
    never stands on a command line, which any user of the machine can read."""
    server = start_server(tmp_path / "data", host="0.0.0.0", auth=True, extra_env={"SHIPYARD_WORKERS": "2"})
    try:
        log = ""
        for _ in range(50):
            log = server.log()
            if "shown once:" in log:
                break
            time.sleep(0.1)
        password = log.split("shown once:\n")[1].split()[0]
        assert log.count("shown once:") == 1
        # a client host, not the wildcard the server listens on
        assert f"podman login --tls-verify=false -u admin 127.0.0.1:{server.port}" in log
        for pid in (server.process.pid, *_children(server.process.pid)):
            assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/token?service=shipyard",
            headers={"Authorization": "Basic " + base64.b64encode(b"admin:" + password.encode()).decode()},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


def test_no_banner_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "shipyard", "serve", "--port", str(port), "--data-dir", str(tmp_path)],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "shown once" not in result.stdout + result.stderr
    assert "Log in, then" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
