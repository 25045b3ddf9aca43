"""The metrics observer and who may read /metrics, driven in-process through the ASGI interface."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.api.metrics import Metrics, MetricsEndpoint
from shipyard.services.health import ReadinessService


@dataclass(frozen=True)
class Record:
    route: str | None
    method: str
    status: int
    bytes_received: int = 0
    bytes_sent: int = 0
    duration: float = 0.001
    time: float = 0.0


def scraped(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_observer_counts_by_route_method_and_status() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe(Record("/v2/{name}/manifests/{reference}", "GET", 200, bytes_sent=500))
    metrics.observe(Record("/v2/{name}/blobs/uploads/{uuid}", "PATCH", 202, bytes_received=1000))
    metrics.observe(Record(None, "BREW", 404, duration=0.2))
    got = scraped(metrics)
    manifest = {"route": "/v2/{name}/manifests/{reference}", "method": "GET"}
    assert got[("shipyard_http_requests_total", frozenset({**manifest, "status": "200"}.items()))] == 3
    assert got[("shipyard_http_request_duration_seconds_count", frozenset(manifest.items()))] == 3
    sent = ("shipyard_http_sent_bytes_total", frozenset({"route": manifest["route"]}.items()))
    assert got[sent] == 1500
    received = (
        "shipyard_http_received_bytes_total",
        frozenset({"route": "/v2/{name}/blobs/uploads/{uuid}"}.items()),
    )
    assert got[received] == 1000
    # an unknown method and an unrouted path share labels: clients cannot mint series
    odd = {"route": "unmatched", "method": "other", "status": "404"}
    assert got[("shipyard_http_requests_total", frozenset(odd.items()))] == 1
    assert got[("shipyard_failed_logins_total", frozenset())] == 0


def test_failed_logins_are_token_refusals_and_throttles() -> None:
    metrics = Metrics()
    for status in (200, 401, 429, 400):
        metrics.observe(Record("/token", "POST", status))
    metrics.observe(Record("/v2/", "GET", 401))
    assert scraped(metrics)[("shipyard_failed_logins_total", frozenset())] == 2


def test_count_to_advances_by_the_difference() -> None:
    metrics = Metrics()
    hits = metrics.manifest_cache.labels("hit")
    metrics.count_to("hits", hits, 5)
    metrics.count_to("hits", hits, 5)
    metrics.count_to("hits", hits, 7)
    assert scraped(metrics)[("shipyard_manifest_cache_lookups_total", frozenset({("result", "hit")}))] == 7


def call(
    endpoint: MetricsEndpoint, client: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "headers": headers or [],
        "client": (client, 40000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(endpoint(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def test_loopback_clients_read_the_metrics_by_default() -> None:
    endpoint = MetricsEndpoint(Metrics(), access="loopback", token=None)
    assert call(endpoint, "127.0.0.1")[0] == 200
    assert call(endpoint, "::1")[0] == 200
    status, _, body = call(endpoint, "192.0.2.7")
    assert status == 403
    assert json.loads(body)["errors"][0]["code"] == "DENIED"


def test_with_a_token_other_clients_are_asked_for_it() -> None:
    endpoint = MetricsEndpoint(Metrics(), access="loopback", token="s3cret-token")
    status, headers, body = call(endpoint, "192.0.2.7")
    assert status == 401
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    assert call(endpoint, "192.0.2.7", [(b"authorization", b"Bearer s3cret-token")])[0] == 200
    assert call(endpoint, "192.0.2.7", [(b"authorization", b"Bearer s3cret-tokem")])[0] == 403
    assert call(endpoint, "192.0.2.7", [(b"authorization", b"Basic s3cret-token")])[0] == 403


def test_token_only_refuses_loopback_without_it() -> None:
    endpoint = MetricsEndpoint(Metrics(), access="token", token="s3cret-token")
    assert call(endpoint, "127.0.0.1")[0] == 401
    assert call(endpoint, "127.0.0.1", [(b"authorization", b"Bearer s3cret-token")])[0] == 200
    with pytest.raises(ValueError):
        MetricsEndpoint(Metrics(), access="token", token=None)


def test_any_lets_everyone_read() -> None:
    assert call(MetricsEndpoint(Metrics(), access="any", token=None), "198.51.100.1")[0] == 200


def test_readiness_reports_each_failed_check_without_its_reason() -> None:
    def broken() -> None:
        raise OSError("connection to db.internal:5432 refused")

    result = ReadinessService({"database": broken, "storage": lambda: None}).check()
    assert not result.ready
    assert result.document() == {"status": "unavailable", "checks": {"database": "failed", "storage": "ok"}}


def test_latencies_land_in_their_buckets() -> None:
    metrics = Metrics()
    for duration in (0.0005, 0.2, 0.25, 100.0):
        metrics.observe(Record("/v2/", "GET", 200, duration=duration))
    got = scraped(metrics)

    def bucket(le: str) -> float:
        labels = {"route": "/v2/", "method": "GET", "le": le}
        return got[("shipyard_http_request_duration_seconds_bucket", frozenset(labels.items()))]

    # a bucket counts the durations up to and including its bound
    assert bucket("0.0005") == 1
    assert bucket("0.1") == 1
    assert bucket("0.25") == 3
    assert bucket("60.0") == 3
    assert bucket("+Inf") == 4
    total = got[
        ("shipyard_http_request_duration_seconds_sum", frozenset({"route": "/v2/", "method": "GET"}.items()))
    ]
    assert total == pytest.approx(100.4505)


class Finished(NamedTuple):
    """A named tuple with the fields in an order of its own: the metrics take columns by name."""

    bytes_sent: int
    status: int
    duration: float
    route: str | None
    time: float
    method: str
    bytes_received: int


def test_a_batch_of_named_tuples_counts_as_the_records_one_by_one() -> None:
    batch = [
        Finished(100, 200, 0.003, "/v2/", 1.0, "GET", 0),
        Finished(50, 404, 0.2, "/v2/", 1.0, "GET", 7),
        Finished(100, 200, 0.0001, "/v2/", 1.0, "GET", 0),
    ]
    together, apart = Metrics(), Metrics()
    together.observe_all(batch)
    for record in batch:
        apart.observe(
            Record(
                record.route,
                record.method,
                record.status,
                record.bytes_received,
                record.bytes_sent,
                record.duration,
                record.time,
            )
        )
    got = scraped(together)

    def figures(scrape: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[Any, float]:
        return {key: value for key, value in scrape.items() if not key[0].endswith("_created")}

    assert figures(got) == figures(scraped(apart))
    labels = frozenset({"route": "/v2/", "method": "GET", "status": "200"}.items())
    assert got[("shipyard_http_requests_total", labels)] == 2
    assert got[("shipyard_http_sent_bytes_total", frozenset({("route", "/v2/")}))] == 250
    assert got[("shipyard_http_received_bytes_total", frozenset({("route", "/v2/")}))] == 7
