"""Login limits, the hashing pool's cap, the aggregated failed-auth audit and the /token body checks,
against a real `shipyard serve`."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.db.accounts import AccountStore
from shipyard.db.engine import make_engine
from tests.support.server import ServerProcess, start_server

PASSWORD = "hardening-pw"


def basic(login: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()}


@contextlib.contextmanager
def serve(tmp_path: Path, **env: str) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path / "data", auth=True, extra_env={"SHIPYARD_ADMIN_PASSWORD": PASSWORD, **env}
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with serve(
        tmp_path,
        SHIPYARD_LOGIN_MAX_SOURCE_FAILURES="5",
        SHIPYARD_LOGIN_FAILURE_WINDOW_SECONDS="120",
        SHIPYARD_FAILED_AUTH_AUDIT_WINDOW_SECONDS="2",
    ) as server:
        yield server


def audit_lines(server: ServerProcess, event: str) -> list[str]:
    return [line for line in server.log().splitlines() if f"shipyard.audit: {event} " in line]


def test_failures_from_one_source_for_any_logins_get_429_with_retry_after(
    strict_server: ServerProcess,
) -> None:
    with httpx.Client(base_url=strict_server.url, timeout=30) as client:
        for n in range(5):
            r = client.get("/token", params={"service": "shipyard"}, headers=basic(f"nobody-{n}", "x"))
            assert r.status_code == 401, r.text
        # a sixth login from the same source is refused before any password is checked: even the
        # admin's right one
        for login, password in (("nobody-new", "x"), ("admin", PASSWORD)):
            r = client.get("/token", params={"service": "shipyard"}, headers=basic(login, password))
            assert r.status_code == 429, r.text
            assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
            assert 110 <= int(r.headers["retry-after"]) <= 120
        r = client.post("/token", data={"grant_type": "password", "username": "admin", "password": PASSWORD})
        assert r.status_code == 429
        assert "retry-after" in r.headers
        # the management API shares the limiter, and says when to come back too
        r = client.get("/api/v1/whoami", headers=basic("admin", PASSWORD))
        assert r.status_code == 429, r.text
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert 110 <= int(r.headers["retry-after"]) <= 120


def test_the_hashing_pool_answers_429_at_once_when_full(tmp_path: Path) -> None:
    with serve(
        tmp_path,
        SHIPYARD_LOGIN_HASH_WORKERS="1",
        SHIPYARD_LOGIN_HASH_MAX_WAITING="0",
        SHIPYARD_LOGIN_MAX_SOURCE_FAILURES="100000",
        SHIPYARD_LOGIN_MAX_FAILURES="100000",
    ) as server:
        statuses: list[tuple[int, str | None, float]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(24)

        def login(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                barrier.wait(30)
                began = time.monotonic()
                r = client.get("/token", params={"service": "shipyard"}, headers=basic(f"u{n}", "x"))
                with lock:
                    statuses.append((r.status_code, r.headers.get("retry-after"), time.monotonic() - began))

        threads = [threading.Thread(target=login, args=(n,)) for n in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = sorted(code for code, _, _ in statuses)
        assert len(codes) == 24
        assert set(codes) == {401, 429}, codes
        for code, retry_after, _ in statuses:
            if code == 429:
                assert retry_after == "1"
        # nothing waits behind the one hash: a refusal takes no longer than the slowest check
        assert codes.count(429) >= 12, codes
        # and the refused logins were not counted as failures: each user can still log in later
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.get("/token", params={"service": "shipyard"}, headers=basic("admin", PASSWORD))
            assert r.status_code == 200, r.text


def test_a_flood_of_garbage_tokens_is_audited_once_per_window_with_a_count(
    strict_server: ServerProcess,
) -> None:
    with httpx.Client(base_url=strict_server.url, timeout=30) as client:
        for n in range(60):
            r = client.get("/v2/", headers={"authorization": f"Bearer garbage.{n}.token"})
            assert r.status_code == 401
        for n in range(40):
            # every kid is new: the reason's tail is the client's and must not split the count
            header = json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": f"made-up-{n}"}).encode()
            token = base64.urlsafe_b64encode(header).decode().rstrip("=") + ".e30.c2ln"
            r = client.get("/v2/", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 401
    # the first of each kind at once
    first = [line for line in audit_lines(strict_server, "token-rejected") if "more within" not in line]
    assert len(first) == 2, first
    assert "reason=undecodable token" in first[0]
    assert "reason=unknown key id: 'made-up-0'" in first[1]
    # then, once the 2 s window has ended, one line per kind with the count of the rest
    deadline = time.monotonic() + 15
    while len(audit_lines(strict_server, "token-rejected")) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = audit_lines(strict_server, "token-rejected")
    assert len(lines) == 4, lines
    counts = sorted(int(m.group(1)) for line in lines if (m := re.search(r"reason=(\d+) more within", line)))
    assert sum(counts) == 98, lines
    # the database holds the same rows, not one per token
    engine = make_engine(f"sqlite:///{strict_server.data_dir / 'shipyard.db'}")
    try:
        events = AccountStore(engine).audit_events(limit=1000)
    finally:
        engine.dispose()
    rejected = [e for e in events if e["event"] == "token-rejected"]
    assert len(rejected) == 4, rejected


def test_login_names_are_cut_to_128_characters_in_the_audit(strict_server: ServerProcess) -> None:
    long_name = "L" * 5000
    with httpx.Client(base_url=strict_server.url, timeout=30) as client:
        r = client.get("/token", params={"service": "shipyard"}, headers=basic(long_name, "x"))
        assert r.status_code == 401
    deadline = time.monotonic() + 10
    while not audit_lines(strict_server, "login-failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    (line,) = audit_lines(strict_server, "login-failed")
    assert f"principal={'L' * 128} " in line
    assert "L" * 129 not in line


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serve(tmp_path_factory.mktemp("token-bodies")) as server:
        yield server


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"grant_type=password&username=\xff\xfe&password=x", "application/x-www-form-urlencoded"),
        (b"grant_type=password&username=%ff%fe&password=x", "application/x-www-form-urlencoded"),
        (b"grant_type=password&username=a%00b&password=x", "application/x-www-form-urlencoded"),
        (b"grant_type=password&grant_type=refresh_token", "application/x-www-form-urlencoded"),
        (b"&&&===&", "application/x-www-form-urlencoded"),
        (b'{"grant_type": "password"}', "application/json"),
        (b"\x00\x01\x02", "application/octet-stream"),
        (b"grant_type=refresh_token&refresh_token=\xc3\xa9.\xc3\xa9.\xc3\xa9", "text/plain"),
    ],
)
def test_a_malformed_token_body_gets_400(token_server: ServerProcess, body: bytes, content_type: str) -> None:
    r = httpx.post(
        f"{token_server.url}/token", content=body, headers={"content-type": content_type}, timeout=30
    )
    assert r.status_code == 400, r.text
    (error,) = r.json()["errors"]
    assert error["code"] == "UNSUPPORTED"
    assert error["message"]


def test_an_oversized_token_body_gets_400_without_being_read(token_server: ServerProcess) -> None:
    with socket.create_connection((token_server.host, token_server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10000000\r\n\r\ngrant_type=password"
        )
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 400 "), head


def test_a_client_gone_mid_body_is_not_an_error_in_the_log(token_server: ServerProcess) -> None:
    before = len(token_server.log())
    for _ in range(3):
        with socket.create_connection((token_server.host, token_server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 100\r\n\r\ngrant_type=pass"
            )
    # the server is still fine, and said nothing alarming about the three truncated bodies
    r = httpx.get(f"{token_server.url}/token", params={"service": "shipyard"}, auth=("admin", PASSWORD))
    assert r.status_code == 200
    time.sleep(0.5)
    added = token_server.log()[before:]
    assert "ERROR" not in added, added
    assert "Traceback" not in added, added
