"""The access log, the application's access observer, and request ids."""

from __future__ import annotations

import json
import logging

import pytest

from shipyard.server.access import FLUSH_RECORDS
from shipyard.server.types import AccessRecord, Receive, Scope, Send
from tests.server.apps import lifespan, read_body, respond
from tests.server.conftest import Reader, request, serving

pytestmark = pytest.mark.usefixtures("server_loop")


class FrameworkRoute:
    def __init__(self, path: str) -> None:
        self.path = path


class Observed:
    """An application that annotates its scope, with an access observer that keeps what it is given."""

    def __init__(self, *, failing: bool = False) -> None:
        self.records: list[AccessRecord] = []
        self.failing = failing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        assert body is not None
        if scope["path"] == "/framework":
            scope["route"] = FrameworkRoute("/frame/{work}")  # as Starlette leaves its route object
        if scope["path"].startswith("/v2/"):
            scope["route"] = "/v2/{name}/manifests/{reference}"
            scope["principal"] = "alice"
            scope["repository"] = "library/app"
        await respond(send, 201, b"created:" + body)

    def access_observer(self, record: AccessRecord) -> None:
        self.records.append(record)
        if self.failing:
            raise RuntimeError("observer is broken")


def test_the_observer_gets_one_record_per_request_with_the_apps_annotations() -> None:
    app = Observed()
    with serving(app) as server, server.connect() as sock:
        reader = Reader(sock)
        sock.sendall(
            request("PUT", "/v2/library/app/manifests/latest", {"X-Request-ID": "abc.DEF-12_3"}, b"xyz")
        )
        response = reader.response()
        assert response.status == 201
        assert response.headers["x-request-id"] == "abc.DEF-12_3"
        sock.sendall(request("GET", "/other"))
        other = reader.response()
    first, second = app.records
    assert first.method == "PUT"
    assert first.path == "/v2/library/app/manifests/latest"
    assert first.route == "/v2/{name}/manifests/{reference}"
    assert first.principal == "alice"
    assert first.repository == "library/app"
    assert first.status == 201
    assert first.bytes_received == 3
    assert first.bytes_sent == len(b"created:xyz")
    assert first.client == "127.0.0.1"
    assert first.request_id == "abc.DEF-12_3"
    assert 0 <= first.duration < 5
    assert second.route is None and second.principal is None and second.repository is None
    # a generated id, returned to the client
    assert second.request_id == other.headers["x-request-id"]
    assert second.request_id != first.request_id


@pytest.mark.parametrize("offered", ["a" * 129, "has space", "semi;colon", ""])
def test_an_insane_request_id_is_replaced(offered: str) -> None:
    app = Observed()
    with serving(app) as server, server.connect() as sock:
        sock.sendall(request("GET", "/", {"X-Request-ID": offered}))
        response = Reader(sock).response()
    returned = response.headers["x-request-id"]
    assert returned != offered
    assert 0 < len(returned) <= 128
    assert app.records[0].request_id == returned


def test_a_failing_observer_is_logged_once_and_requests_carry_on(caplog: pytest.LogCaptureFixture) -> None:
    app = Observed(failing=True)
    with serving(app) as server, server.connect() as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(request("GET", "/"))
            assert reader.response().status == 201
    assert len(app.records) == 3
    failures = [r for r in caplog.records if "access observer" in r.getMessage()]
    assert len(failures) == 1


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_log_line(log_format: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shipyard.access")
    with serving(Observed(), log_format=log_format) as server, server.connect() as sock:
        sock.sendall(request("PUT", "/v2/library/app/manifests/latest", {"X-Request-ID": "r1"}, b"abcd"))
        assert Reader(sock).response().status == 201
    (line,) = [r.getMessage() for r in caplog.records if r.name == "shipyard.access"]
    if log_format == "json":
        document = json.loads(line)
        assert document["route"] == "/v2/{name}/manifests/{reference}"
        assert document["status"] == 201
        assert document["bytes_received"] == 4
        assert document["principal"] == "alice"
        assert document["request_id"] == "r1"
        assert document["client"] == "127.0.0.1"
    else:
        fields = line.split()
        assert fields[1:8] == [
            "127.0.0.1",
            "PUT",
            "/v2/{name}/manifests/{reference}",
            "201",
            "4",
            "12",
            fields[7],
        ]
        assert fields[8:] == ["alice", "library/app", "r1"]


def test_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shipyard.access")
    with serving(Observed(), access_log=False) as server, server.connect() as sock:
        sock.sendall(request("GET", "/"))
        assert Reader(sock).response().status == 201
    assert not [r for r in caplog.records if r.name == "shipyard.access"]


def test_requests_the_server_refuses_itself_are_recorded_too() -> None:
    app = Observed()
    with serving(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n")
        response = Reader(sock).response()
        assert response.status == 400
    (record,) = app.records
    assert record.status == 400
    assert response.headers["x-request-id"] == record.request_id
    assert record.client == "127.0.0.1"


def test_json_lines_escape_what_needs_it() -> None:
    from shipyard.server.access import AccessLog

    record = AccessRecord(1e9, "::1", "GET", '/a"b\\c\n', None, 200, 1, 2, 0.5, "r", "ünïcode", None)
    document = json.loads(AccessLog._json(record))
    assert document["path"] == '/a"b\\c\n'
    assert document["principal"] == "ünïcode"
    assert document["route"] is None and document["repository"] is None
    assert document["time"] == "2001-09-09T01:46:40.000Z"
    assert document["duration_ms"] == 500.0


def test_a_frameworks_route_object_gives_its_template() -> None:
    app = Observed()
    with serving(app) as server, server.connect() as sock:
        sock.sendall(request("GET", "/framework"))
        assert Reader(sock).response().status == 201
    (record,) = app.records
    assert record.route == "/frame/{work}"


class Batched:
    """An application with a batch observer."""

    def __init__(self) -> None:
        self.batches: list[list[AccessRecord]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await read_body(receive)
        await respond(send, 200, b"ok")

    def access_batch_observer(self, records: list[AccessRecord]) -> None:
        self.batches.append(records)


def test_a_batch_observer_gets_every_record_in_few_calls() -> None:
    app = Batched()
    with serving(app) as server, server.connect() as sock:
        reader = Reader(sock)
        for number in range(FLUSH_RECORDS + 3):
            sock.sendall(request("GET", f"/{number}"))
            assert reader.response().status == 200
    # a batch a second at most, one when FLUSH_RECORDS are waiting, and the rest when the server stops
    assert 2 <= len(app.batches) < 10
    assert max(len(batch) for batch in app.batches) <= FLUSH_RECORDS
    records = [record for batch in app.batches for record in batch]
    assert [r.path for r in records] == [f"/{number}" for number in range(FLUSH_RECORDS + 3)]
    assert all(isinstance(r, AccessRecord) and r.status == 200 for r in records)
    assert len({r.request_id for r in records}) == len(records)
