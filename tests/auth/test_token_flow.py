"""The token flow end to end: challenges, /token (GET and the OAuth2 POST grants), login passwords,
failed-login rate limiting, the verification cache, and no-auth mode only on request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from shipyard.app import build
from shipyard.auth import tokens
from shipyard.config import Settings
from tests.api.helpers import push_image
from tests.auth.conftest import (
    PASSWORD,
    SOURCE,
    AuthRegistry,
    basic,
    bearer,
    challenge,
    decode,
    error_code,
    make_auth_registry,
    segment,
)
from tests.support.asgi import SyncASGITransport

# -- challenges ---------------------------------------------------------------------------------


def test_get_v2_without_a_token_is_challenged(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.get("/v2/")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert r.headers["www-authenticate"] == 'Bearer realm="http://registry.test/token",service="shipyard"'
    # Basic credentials are no token: the same challenge
    r = auth_registry.client.get("/v2/", headers=basic("alpha-writer", PASSWORD))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="http://registry.test/token",service="shipyard"'


def test_get_v2_with_a_token_is_200(auth_registry: AuthRegistry) -> None:
    assert auth_registry.client.get("/v2/", headers=bearer(auth_registry.token())).status_code == 200
    r = auth_registry.client.get("/v2/", headers=bearer(auth_registry.token(login="alpha-reader")))
    assert r.status_code == 200


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2/alpha/app/manifests/latest", "repository:alpha/app:pull"),
        ("HEAD", "/v2/alpha/app/manifests/latest", "repository:alpha/app:pull"),
        ("GET", f"/v2/alpha/app/blobs/{DIGEST}", "repository:alpha/app:pull"),
        ("HEAD", f"/v2/alpha/app/blobs/{DIGEST}", "repository:alpha/app:pull"),
        ("GET", "/v2/alpha/app/tags/list", "repository:alpha/app:pull"),
        ("GET", f"/v2/alpha/app/referrers/{DIGEST}", "repository:alpha/app:pull"),
        ("POST", "/v2/alpha/app/blobs/uploads/", "repository:alpha/app:pull,push"),
        ("PATCH", "/v2/alpha/app/blobs/uploads/some-id", "repository:alpha/app:pull,push"),
        ("PUT", "/v2/alpha/app/blobs/uploads/some-id", "repository:alpha/app:pull,push"),
        ("PUT", "/v2/alpha/app/manifests/latest", "repository:alpha/app:pull,push"),
        ("DELETE", "/v2/alpha/app/manifests/latest", "repository:alpha/app:delete"),
        ("DELETE", f"/v2/alpha/app/blobs/{DIGEST}", "repository:alpha/app:delete"),
        ("GET", "/v2/alpha/nested/deep/app/tags/list", "repository:alpha/nested/deep/app:pull"),
        ("GET", "/v2/_catalog", "registry:catalog:*"),
    ],
)
def test_unauthenticated_repository_requests_are_challenged_with_the_scope(
    auth_registry: AuthRegistry, method: str, path: str, scope: str
) -> None:
    r = auth_registry.client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        f'Bearer realm="http://registry.test/token",service="shipyard",scope="{scope}"'
    )
    if method == "HEAD":
        assert r.content == b""
    else:
        assert error_code(r) == "UNAUTHORIZED"


def test_the_realm_follows_public_url(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    for registry in make_auth_registry(
        request, tmp_path, "sqlite", public_url="https://registry.example.com:8443/"
    ):
        r = registry.client.get("/v2/alpha/app/tags/list")
        assert challenge(r) == {
            "realm": "https://registry.example.com:8443/token",
            "service": "shipyard",
            "scope": "repository:alpha/app:pull",
        }


def test_the_challenged_flow_pulls_and_pushes(auth_registry: AuthRegistry) -> None:
    """As a client does it: request, read the challenge, get a token for its scope, retry."""
    r = auth_registry.client.post("/v2/alpha/flow/blobs/uploads/")
    params = challenge(r)
    assert params["realm"] == "http://registry.test/token"
    r = auth_registry.client.get(
        "/token",
        params={"service": params["service"], "scope": params["scope"]},
        auth=("alpha-writer", PASSWORD),
    )
    image = push_image(auth_registry.authed(r.json()["token"]), "alpha/flow", "v1")
    pull = auth_registry.authed(auth_registry.token("repository:alpha/flow:pull", login="alpha-reader"))
    assert pull.get("/v2/alpha/flow/manifests/v1").content == image.body
    assert pull.get(f"/v2/alpha/flow/blobs/{DIGEST}").status_code == 404


# -- OAuth2 POST /token -------------------------------------------------------------------------


def oauth(registry: AuthRegistry, client: httpx.Client | None = None, **form: str) -> httpx.Response:
    return (client or registry.client).post(
        "/token", data={"service": "shipyard", "client_id": "test", **form}
    )


def test_oauth2_password_grant(auth_registry: AuthRegistry) -> None:
    r = oauth(
        auth_registry,
        grant_type="password",
        username="alpha-writer",
        password=PASSWORD,
        scope="repository:alpha/app:pull,push,delete repository:beta/app:pull",
    )
    assert r.status_code == 200, r.text
    document = r.json()
    assert document["access_token"] == document["token"]
    assert document["expires_in"] == 300
    assert document["issued_at"]
    assert document["scope"] == "repository:alpha/app:delete,pull,push"
    assert "refresh_token" not in document
    _, payload = decode(document["access_token"])
    assert payload["sub"] == "alpha-writer"
    assert auth_registry.client.get("/v2/", headers=bearer(document["access_token"])).status_code == 200


def test_oauth2_password_grant_with_a_bad_password(auth_registry: AuthRegistry) -> None:
    marker = auth_registry.mark()
    r = oauth(auth_registry, grant_type="password", username="beta-writer", password="nope", scope="")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    events = auth_registry.audit_since(marker)
    assert [(e["event"], e["principal"], e["source"], e["action"]) for e in events] == [
        ("login-failed", "beta-writer", SOURCE, "login")
    ]
    assert events[0]["reason"] == "bad secret"


def test_oauth2_refresh_token_grant(auth_registry: AuthRegistry) -> None:
    r = oauth(
        auth_registry,
        grant_type="password",
        username="alpha-reader",
        password=PASSWORD,
        access_type="offline",
        scope="repository:alpha/app:pull",
    )
    assert r.status_code == 200, r.text
    refresh = r.json()["refresh_token"]
    _, payload = decode(refresh)
    assert payload["aud"] == "shipyard/refresh"
    r = oauth(
        auth_registry,
        grant_type="refresh_token",
        refresh_token=refresh,
        scope="repository:alpha/app:pull,push",
    )
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "repository:alpha/app:pull"
    assert "refresh_token" not in r.json()
    _, payload = decode(r.json()["access_token"])
    assert payload["sub"] == "alpha-reader"


def test_a_refresh_token_stops_working_when_the_generation_is_bumped(fresh_registry: AuthRegistry) -> None:
    r = oauth(
        fresh_registry,
        grant_type="password",
        username="beta-writer",
        password=PASSWORD,
        access_type="offline",
    )
    refresh = r.json()["refresh_token"]
    assert oauth(fresh_registry, grant_type="refresh_token", refresh_token=refresh).status_code == 200
    fresh_registry.identity.accounts.update_principal("beta-writer", bump_generation=True)
    marker = fresh_registry.mark()
    r = oauth(fresh_registry, grant_type="refresh_token", refresh_token=refresh)
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    events = fresh_registry.audit_since(marker)
    assert [(e["event"], e["principal"], e["reason"]) for e in events] == [
        ("refresh-failed", "beta-writer", "token generation was bumped")
    ]


def test_refresh_token_rejections(auth_registry: AuthRegistry) -> None:
    access = auth_registry.token(login="alpha-writer")
    for bad in ("", "x.y.z", access):  # an access token is no refresh token (audience)
        r = oauth(auth_registry, grant_type="refresh_token", refresh_token=bad)
        assert r.status_code == 401
        assert error_code(r) == "UNAUTHORIZED"


def test_oauth2_unsupported_grant(auth_registry: AuthRegistry) -> None:
    r = oauth(auth_registry, grant_type="client_credentials")
    assert r.status_code == 400
    assert error_code(r) == "UNSUPPORTED"


def test_get_token_offline_gives_a_refresh_token(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.get(
        "/token", params={"service": "shipyard", "offline_token": "true"}, auth=("alpha-writer", PASSWORD)
    )
    assert r.status_code == 200
    assert (
        oauth(auth_registry, grant_type="refresh_token", refresh_token=r.json()["refresh_token"]).status_code
        == 200
    )
    # not for anonymous callers
    r = auth_registry.client.get("/token", params={"service": "shipyard", "offline_token": "true"})
    assert r.status_code == 200 and "refresh_token" not in r.json()


# -- login passwords ----------------------------------------------------------------------------


def login_password(registry: AuthRegistry, login: str) -> str:
    r = registry.client.post("/api/v1/auth/login-password", auth=(login, PASSWORD))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    document = r.json()
    assert document["username"] == "shipyard"
    assert document["expires_at"].endswith("Z")
    password: str = document["password"]
    return password


def test_a_login_password_works_with_the_user_shipyard(fresh_registry: AuthRegistry) -> None:
    password = login_password(fresh_registry, "alpha-writer")
    header, payload = decode(password)
    assert header["kid"] == fresh_registry.identity.keys.active.kid
    assert payload["aud"] == "shipyard/login"
    assert payload["exp"] - payload["iat"] == 12 * 3600
    assert {payload["pid"], payload["acct"], payload["gen"]} >= {"alpha", 0}
    token = fresh_registry.token("repository:alpha/app:pull,push", login="shipyard", password=password)
    _, claims = decode(token)
    assert claims["sub"] == "alpha-writer"
    assert claims["access"] == [{"type": "repository", "name": "alpha/app", "actions": ["pull", "push"]}]
    # also as the OAuth2 password grant
    r = oauth(fresh_registry, grant_type="password", username="shipyard", password=password)
    assert r.status_code == 200
    # a login password is for the user `shipyard` only
    r = fresh_registry.token_response(login="alpha-writer", password=password)
    assert r.status_code == 401


def test_a_login_password_needs_credentials(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.post("/api/v1/auth/login-password")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert r.headers["www-authenticate"] == 'Basic realm="shipyard"'
    r = auth_registry.client.post("/api/v1/auth/login-password", headers=bearer(auth_registry.token()))
    assert r.status_code == 401


def assert_login_password_refused(
    registry: AuthRegistry, password: str, reason: str, principal: str = "shipyard"
) -> None:
    """Refused, and audited under the principal the password names when its signature holds (else
    under the fixed user name)."""
    marker = registry.mark()
    r = registry.token_response(login="shipyard", password=password)
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert r.json()["errors"][0]["message"] == "invalid username or password"
    events = registry.audit_since(marker)
    assert [(e["event"], e["principal"], e["source"], e["action"]) for e in events] == [
        ("login-failed", principal, SOURCE, "login")
    ]
    assert reason in str(events[0]["reason"]), events


def test_a_login_password_stops_working_when_the_principal_is_disabled(fresh_registry: AuthRegistry) -> None:
    password = login_password(fresh_registry, "alpha-writer")
    accounts = fresh_registry.identity.accounts
    accounts.update_principal("alpha-writer", disabled=True)
    assert_login_password_refused(fresh_registry, password, "principal or account disabled", "alpha-writer")
    accounts.update_principal("alpha-writer", disabled=False)
    assert fresh_registry.token_response(login="shipyard", password=password).status_code == 200
    # a disabled account, too
    accounts.set_account_disabled("alpha", True)
    assert_login_password_refused(fresh_registry, password, "principal or account disabled", "alpha-writer")


def test_a_login_password_stops_working_when_the_generation_is_bumped(fresh_registry: AuthRegistry) -> None:
    password = login_password(fresh_registry, "beta-writer")
    fresh_registry.identity.accounts.update_principal("beta-writer", bump_generation=True)
    assert_login_password_refused(fresh_registry, password, "token generation was bumped", "beta-writer")
    fresh = login_password(fresh_registry, "beta-writer")
    assert decode(fresh)[1]["gen"] == 1
    assert fresh_registry.token_response(login="shipyard", password=fresh).status_code == 200


def test_an_expired_login_password_is_refused(fresh_registry: AuthRegistry) -> None:
    identity = fresh_registry.identity
    found = identity.accounts.get_principal("alpha-writer")
    assert found is not None
    principal = found[0]
    password, _ = tokens.issue(
        identity.keys,
        issuer="shipyard",
        subject=principal.login,
        audience="shipyard/login",
        lifetime=3600,
        extra={"pid": principal.id, "acct": principal.account, "gen": principal.token_generation},
        now=time.time() - 3600 - 31,
    )
    assert_login_password_refused(fresh_registry, password, "login password rejected: expired")


def test_a_tampered_login_password_is_refused(fresh_registry: AuthRegistry) -> None:
    password = login_password(fresh_registry, "alpha-reader")
    head, _, sig = password.split(".")
    _, payload = decode(password)
    # claim to be the admin: the signature no longer matches
    admin = fresh_registry.identity.accounts.get_principal("admin")
    assert admin is not None
    forged = f"{head}.{segment({**payload, 'pid': admin[0].id, 'acct': 'admin'})}.{sig}"
    assert_login_password_refused(fresh_registry, forged, "login password rejected: bad signature")
    assert_login_password_refused(fresh_registry, "not-a-jwt", "login password rejected")


def test_a_login_password_of_a_deleted_principal_is_refused(fresh_registry: AuthRegistry) -> None:
    password = login_password(fresh_registry, "alpha-reader")
    fresh_registry.identity.accounts.delete_principal("alpha-reader")
    assert_login_password_refused(fresh_registry, password, "principal no longer exists", "alpha-reader")


# -- failed logins ------------------------------------------------------------------------------


def test_failed_logins_are_rate_limited_per_principal_and_source(fresh_registry: AuthRegistry) -> None:
    registry = fresh_registry
    here = registry.client
    elsewhere = registry.client_from("10.9.8.7")
    for _ in range(10):
        r = registry.token_response(login="alpha-writer", password="wrong", client=here)
        assert r.status_code == 401
    marker = registry.mark()
    # the 11th attempt is refused before the password is looked at: even the right one
    for password in ("wrong", PASSWORD):
        r = registry.token_response(login="alpha-writer", password=password, client=here)
        assert r.status_code == 429, r.text
        assert error_code(r) == "TOOMANYREQUESTS"
        # until the first of the ten failures slides out of the 300 s window
        assert 290 <= int(r.headers["retry-after"]) <= 300
    r = oauth(registry, here, grant_type="password", username="alpha-writer", password=PASSWORD)
    assert r.status_code == 429
    assert registry.audit_since(marker) == []  # the refused attempts are not counted as failures
    # the same principal from another source is not blocked
    assert registry.token_response(login="alpha-writer", client=elsewhere).status_code == 200
    # nor another principal from the same source
    assert registry.token_response(login="alpha-reader", client=here).status_code == 200
    # the limit slides: once the window has passed, the right password works again
    limiter = registry.identity.limiter
    limiter._clock = lambda: time.monotonic() + limiter.window
    assert registry.token_response(login="alpha-writer", client=here).status_code == 200


def test_garbage_login_passwords_from_a_source_block_no_valid_login_password(
    fresh_registry: AuthRegistry,
) -> None:
    registry = fresh_registry
    here = registry.client
    password = login_password(registry, "alpha-writer")
    head, body, _ = password.split(".")
    for _ in range(10):
        r = registry.token_response(login="shipyard", password=f"{head}.{body}.forged", client=here)
        assert r.status_code == 401
    # unsigned garbage can only count against the fixed user name at that source: more of it is refused
    r = registry.token_response(login="shipyard", password="garbage", client=here)
    assert r.status_code == 429
    # but a login password whose signature holds is keyed on its own principal, and still works
    assert registry.token_response(login="shipyard", password=password, client=here).status_code == 200
    other = login_password(registry, "alpha-reader")
    assert registry.token_response(login="shipyard", password=other, client=here).status_code == 200


def test_failures_of_a_signed_login_password_count_against_its_principal(
    fresh_registry: AuthRegistry,
) -> None:
    registry = fresh_registry
    here = registry.client
    elsewhere = registry.client_from("10.9.8.7")
    revoked = login_password(registry, "beta-writer")
    registry.identity.accounts.update_principal("beta-writer", bump_generation=True)
    marker = registry.mark()
    for _ in range(10):
        r = registry.token_response(login="shipyard", password=revoked, client=here)
        assert r.status_code == 401
    events = registry.audit_since(marker)
    assert {(e["principal"], e["reason"]) for e in events} == {
        ("beta-writer", "login password: token generation was bumped")
    }
    # the principal is blocked at that source, whichever way it logs in
    assert registry.token_response(login="shipyard", password=revoked, client=here).status_code == 429
    found = registry.identity.accounts.get_principal("beta-writer")
    assert found is not None
    current, _ = registry.identity.issue_login_password(found[0])
    r = registry.token_response(login="shipyard", password=current, client=here)
    assert r.status_code == 429
    assert registry.token_response(login="beta-writer", client=here).status_code == 429
    # not from elsewhere, and no one else
    r = registry.token_response(login="shipyard", password=current, client=elsewhere)
    assert r.status_code == 200
    alpha = login_password(registry, "alpha-writer")
    assert registry.token_response(login="shipyard", password=alpha, client=here).status_code == 200
    assert registry.token_response(login="alpha-writer", client=here).status_code == 200


def test_a_wrong_password_says_so_in_the_message(auth_registry: AuthRegistry) -> None:
    # docker and podman print only the message of the error
    for login in ("alpha-reader", "no-such-user", "shipyard"):
        r = auth_registry.token_response(login=login, password="wrong")
        assert r.status_code == 401
        error = r.json()["errors"][0]
        assert error == {
            "code": "UNAUTHORIZED",
            "message": "invalid username or password",
            "detail": "invalid credentials",
        }
        assert r.headers["www-authenticate"] == 'Basic realm="shipyard"'
    r = oauth(auth_registry, grant_type="password", username="alpha-reader", password="wrong")
    assert r.status_code == 401
    assert r.json()["errors"][0]["message"] == "invalid username or password"


def test_failed_logins_are_audited_with_who_where_and_why(
    auth_registry: AuthRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    marker = auth_registry.mark()
    with caplog.at_level("WARNING", logger="shipyard.audit"):
        auth_registry.token_response(login="no-such-user", password="x")
        auth_registry.token_response(login="alpha-reader", password="x")
    events = auth_registry.audit_since(marker)
    assert [(e["event"], e["principal"], e["source"], e["action"], e["reason"]) for e in events] == [
        ("login-failed", "no-such-user", SOURCE, "login", "unknown principal"),
        ("login-failed", "alpha-reader", SOURCE, "login", "bad secret"),
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "shipyard.audit"]
    assert f"login-failed principal=alpha-reader source={SOURCE} action=login reason=bad secret" in messages
    assert all(PASSWORD not in m and "=x " not in m for m in messages)


def test_a_disabled_principal_cannot_log_in(fresh_registry: AuthRegistry) -> None:
    fresh_registry.identity.accounts.update_principal("beta-writer", disabled=True)
    marker = fresh_registry.mark()
    r = fresh_registry.token_response(login="beta-writer")
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert fresh_registry.audit_since(marker)[0]["reason"] == "principal or account disabled"


# -- the verification cache ---------------------------------------------------------------------


def test_verified_tokens_are_cached(auth_registry: AuthRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    token = auth_registry.token("repository:alpha/app:pull", login="alpha-writer")
    calls: list[str] = []
    real = tokens.verify

    def counting(*args: object, **kwargs: object) -> tokens.Claims:
        calls.append("verify")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tokens, "verify", counting)
    for _ in range(3):
        assert auth_registry.client.get("/v2/", headers=bearer(token)).status_code == 200
    assert calls == ["verify"]


def test_an_expired_cached_token_is_rejected(
    auth_registry: AuthRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = auth_registry.token("repository:alpha/app:pull", login="alpha-writer")
    assert auth_registry.client.get("/v2/", headers=bearer(token)).status_code == 200  # now cached
    _, payload = decode(token)
    later = float(payload["exp"] + tokens.LEEWAY_SECONDS + 1)
    monkeypatch.setattr(time, "time", lambda: later)
    marker = auth_registry.mark()
    r = auth_registry.client.get("/v2/", headers=bearer(token))
    assert r.status_code == 401
    assert challenge(r)["error"] == "invalid_token"
    events = auth_registry.audit_since(marker)
    assert [(e["event"], e["reason"]) for e in events] == [("token-rejected", "expired")]


# -- no-auth mode -------------------------------------------------------------------------------


def test_authentication_is_on_unless_insecure_no_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIPYARD_INSECURE_NO_AUTH", raising=False)
    for no_auth, expected in ((None, 401), (False, 401), (True, 200)):
        data_dir = tmp_path / str(no_auth)
        options = {} if no_auth is None else {"insecure_no_auth": no_auth}
        app = build(Settings(data_dir=data_dir, **options), run_migrations=True)
        client = httpx.Client(transport=SyncASGITransport(app.asgi), base_url="http://registry.test")
        try:
            assert (app.identity is None) == bool(no_auth)
            assert client.get("/v2/").status_code == expected
            r = client.post("/v2/anyone/app/blobs/uploads/")
            assert r.status_code == (202 if no_auth else 401)
            # the token service exists only with authentication
            assert client.get("/token").status_code == (404 if no_auth else 200)
        finally:
            client.close()
            app.close()


def test_issuing_a_login_password_is_audited_without_the_password(fresh_registry: AuthRegistry) -> None:
    accounts = fresh_registry.identity.accounts
    before = max((e.id for e in accounts.audit_page(1000, None)), default=0)
    password = login_password(fresh_registry, "alpha-writer")
    events = [e for e in accounts.audit_page(1000, None) if e.id > before]
    issued = [e for e in events if e.action == "login-password.issue"]
    assert len(issued) == 1, events
    event = issued[0]
    assert (event.principal, event.account, event.target, event.outcome) == (
        "alpha-writer",
        "alpha",
        "alpha-writer",
        "allowed",
    )
    assert event.source and event.source != "local"  # the client's address
    assert event.reason.startswith("expires ")
    assert password not in repr(event)
    assert password.split(".")[2] not in repr(event)  # not even the signature
