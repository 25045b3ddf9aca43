"""Schemathesis against the live OpenAPI document of a real `shipyard serve`: every answer of the
management API must match the document (status, headers, content type, schema), schema-valid requests
must be accepted and schema-violating ones refused, and no request may end in a 500."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import ServerProcess, start_server

ADMIN_PASSWORD = "fuzz-admin-password"
ROOT = Path(__file__).resolve().parents[2]
# the run's own budget; the whole test, server start included, stays near a minute
FUZZ_SECONDS = 45


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    process = start_server(data_dir, auth=True, extra_env={"SHIPYARD_ADMIN_PASSWORD": ADMIN_PASSWORD})
    yield process
    process.stop()


def test_every_operation_asks_for_credentials(server: ServerProcess) -> None:
    """What schemathesis's ignored_auth check would send, without its wrong password: a fixed wrong
    login, repeated for every operation, trips the login limiter (429), which is right, not a bug."""
    document = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=30).json()
    assert document["components"]["securitySchemes"] == {
        "HTTPBasic": {"type": "http", "scheme": "basic", "description": "the same credentials as /token"}
    }
    for path, operations in document["paths"].items():
        name = "acme/app" if path.startswith("/api/v1/repositories/") else "dev"
        url = server.url + path.replace("{account}", "acme").replace("{name}", name).replace("{login}", "dev")
        for method, operation in operations.items():
            assert operation["security"] == [{"HTTPBasic": []}], (method, path)
            r = httpx.request(method.upper(), url, json={}, timeout=30)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"] == 'Basic realm="shipyard"'
            assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_schemathesis_finds_nothing(server: ServerProcess, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    assert st.exists(), "schemathesis is in the test extra"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    command = [
        str(st),
        "run",
        f"{server.url}/api/v1/openapi.json",
        "--auth",
        f"admin:{ADMIN_PASSWORD}",
        "--checks",
        "all",
        "--exclude-checks",
        "ignored_auth",
        "--max-time",
        str(FUZZ_SECONDS),
        # one worker: CPython 3.11.7's ast.parse is not thread-safe, and the fuzzer parses sources
        "--workers",
        "1",
        "--request-timeout",
        "20",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120
    )
    assert result.returncode == 0, result.stdout[-30000:] + result.stderr[-5000:]
    # every operation of the document was tried
    document = httpx.get(f"{server.url}/api/v1/openapi.json", timeout=30).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in result.stdout, result.stdout[-5000:]
    # the fuzzer worked as the admin throughout; the admin is still there and can still log in
    whoami = httpx.get(f"{server.url}/api/v1/whoami", auth=("admin", ADMIN_PASSWORD), timeout=30)
    assert whoami.status_code == 200 and whoami.json()["superuser"] is True
    # nothing the fuzzer sent was an error in the server's log
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log[-5000:]
