"""What a webhook may be: URLs (scheme, no credentials), targets outside private networks unless the
setting allows them (refused at creation when literal, at delivery when a name resolves there), known
event types and well-formed patterns; and the retry policy's defaults. In-process, authentication on."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shipyard.app import make_dispatcher
from shipyard.auth.certs import issue_server_certificate
from shipyard.domain.events import FAILED, PENDING, SUCCEEDED, AttemptRecord
from shipyard.events.dispatcher import DispatchPolicy
from shipyard.events.sender import SendPolicy, post
from shipyard.events.targets import refusal
from tests.auth.conftest import AuthRegistry, make_auth_registry
from tests.support.receiver import receiver

ROOT = ("admin", "pw")


@pytest.fixture(scope="module")
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthRegistry]:
    yield from make_auth_registry(request, tmp_path_factory.mktemp("rules") / "data", "sqlite")


def create(client: httpx.Client, url: str, **body: object) -> httpx.Response:
    return client.post("/api/v1/accounts/alpha/webhooks", json={"url": url, **body}, auth=ROOT)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
        ("http://[::1]/hook", "a host name or IPv4 address"),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("http://192.168.0.1/hook", "192.168.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://127.1/", "127.0.0.1 is a loopback address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
        ("http://0x0a.0.0.1/", "10.0.0.1 is a private address"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://user:secret@example.com/hook", "no credentials"),
        ("http:///hook", "names a host"),
        ("http://example.com:99999/", "not a URL"),
        ("http://example.com/a b", "without spaces"),
        ("http://exämple.com/", "a host name or IPv4 address"),
    ],
)
def test_refused_urls_are_400_with_the_reason(registry: AuthRegistry, url: str, reason: str) -> None:
    r = create(registry.client, url)
    assert r.status_code == 400, r.text
    assert reason in r.json()["errors"][0]["detail"]
    if " is a" in reason:
        assert "server-side request forgery" in r.json()["errors"][0]["detail"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"events": ["manifest.exploded"]}, "unknown event types manifest.exploded"),
        ({"repositories": ["Web/*"]}, "invalid repository pattern"),
        ({"repositories": ["../x"] * 21}, "20"),
    ],
)
def test_unknown_types_and_bad_patterns_are_400(
    registry: AuthRegistry, body: dict[str, object], reason: str
) -> None:
    r = create(registry.client, "https://example.com/hook", **body)
    assert r.status_code == 400, r.text
    assert reason in r.text


def test_a_name_that_resolves_into_a_private_network_is_refused_at_delivery(registry: AuthRegistry) -> None:
    r = create(registry.client, "http://localhost:9/hook", events=["repository.created"])
    assert r.status_code == 201, r.text
    webhook = r.json()["id"]
    assert registry.app.registry.metadata.create_repository("alpha/ssrf")
    dispatcher = make_dispatcher(registry.app.settings, registry.app.engine)
    try:
        assert dispatcher.run_once() == 1
    finally:
        dispatcher.close()
    found = registry.client.get(f"/api/v1/accounts/alpha/webhooks/{webhook}/deliveries", auth=ROOT).json()
    (delivery,) = found["deliveries"]
    (attempt,) = delivery["log"]
    assert attempt["status"] is None
    assert attempt["error"].startswith("refused: localhost:")
    assert "loopback" in attempt["error"]
    assert delivery["state"] == PENDING  # refused attempts are retried like any failure


def test_public_addresses_pass_and_others_do_not() -> None:
    assert refusal("93.184.216.34") is None
    assert refusal("2606:4700::1111") is None
    for address in ("100.64.0.1", "192.0.2.1", "fc00::1", "fe80::1", "240.0.0.1", "::"):
        assert refusal(address) is not None, address


def test_the_default_policy_retries_within_30_seconds_and_gives_up_after_a_day() -> None:
    policy = DispatchPolicy()
    assert policy.delay(1) <= 30
    assert policy.delay(2) > policy.delay(1)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def attempt(at: datetime, status: int | None) -> AttemptRecord:
        return AttemptRecord(at, status, None if status else "timed out", 10, None)

    assert policy.next_state(1, attempt(start, 200), start)[0] == SUCCEEDED
    state, next_at = policy.next_state(1, attempt(start, 500), start)
    assert state == PENDING and next_at - start <= timedelta(seconds=30)
    # the attempts of a day, each after the delay the policy gives it, then failed
    at, attempts = start, 0
    while True:
        attempts += 1
        state, next_at = policy.next_state(attempts, attempt(at, None), start)
        if state == FAILED:
            break
        at = next_at
    assert timedelta(hours=23) <= at - start <= timedelta(hours=24)
    assert 20 <= attempts <= 40


def test_https_deliveries_verify_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = issue_server_certificate(tmp_path / "certs", ["localhost"])
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(issued.server_cert, issued.server_key)
    policy = SendPolicy(allow_private=True, total_timeout=5)
    with receiver(tls=tls) as hook:
        # the CA is not trusted: refused
        untrusted = post(hook.url_for("localhost"), {}, b"{}", policy)
        assert untrusted.status is None and "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "")
        monkeypatch.setenv("SSL_CERT_FILE", str(issued.ca_cert))
        # the name resolves to loopback (allowed here); TLS checks the certificate against the name
        sent = post(hook.url_for("localhost"), {"content-type": "application/json"}, b'{"x":1}', policy)
        assert sent.status == 200, sent.error
        assert hook.wait_for(1)[0].body == b'{"x":1}'
        # the certificate names localhost, not the address
        by_address = post(hook.url_for("127.0.0.1"), {}, b"{}", policy)
        assert by_address.status is None and "CERTIFICATE_VERIFY_FAILED" in (by_address.error or "")
    # with private networks refused, the same name is not even connected to
    refused = post("https://localhost:9/hook", {}, b"{}", SendPolicy())
    assert refused.error is not None and refused.error.startswith("refused: localhost:")
