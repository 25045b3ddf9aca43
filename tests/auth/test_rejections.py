"""The rejection matrix: every token the registry must refuse, over HTTP, with the status, the OCI
error body, the challenge and the audit event."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shipyard.auth import tokens
from shipyard.auth.keys import b64url, b64url_decode
from shipyard.auth.scopes import Scope
from tests.api.helpers import push_blob
from tests.auth.conftest import (
    SOURCE,
    AuthRegistry,
    bearer,
    challenge,
    decode,
    error_code,
    segment,
    standard_payload,
)

REPO = "alpha/app"


def signed(key: Ed25519PrivateKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def ring_signed(registry: AuthRegistry, payload: dict[str, Any], **header: Any) -> str:
    key = registry.identity.keys.active
    return signed(key.private, {"alg": "EdDSA", "typ": "JWT", "kid": key.kid, **header}, payload)


def assert_invalid_token(registry: AuthRegistry, token: str, reason: str) -> None:
    """The token is refused on /v2/ and on a repository endpoint: 401, UNAUTHORIZED, a Bearer challenge
    with error="invalid_token", and a `token-rejected` audit event saying why."""
    marker = registry.mark()
    for path in ("/v2/", f"/v2/{REPO}/tags/list"):
        r = registry.client.get(path, headers=bearer(token))
        assert r.status_code == 401, (path, r.text)
        assert error_code(r) == "UNAUTHORIZED"
        params = challenge(r)
        assert params["realm"] == "http://registry.test/token"
        assert params["service"] == "shipyard"
        assert params["error"] == "invalid_token"
    events = [e for e in registry.audit_since(marker) if e["event"] == "token-rejected"]
    assert len(events) == 2, events
    for event in events:
        assert reason in str(event["reason"]), event
        assert event["source"] == SOURCE


# -- the algorithm ------------------------------------------------------------------------------


def test_alg_none_is_rejected(auth_registry: AuthRegistry) -> None:
    header = segment({"alg": "none", "typ": "JWT"})
    token = f"{header}.{segment(standard_payload())}."
    assert_invalid_token(auth_registry, token, "algorithm not accepted: 'none'")


def test_alg_none_with_the_active_kid_and_a_real_signature_is_rejected(auth_registry: AuthRegistry) -> None:
    good = auth_registry.token(f"repository:{REPO}:pull", login="alpha-writer")
    header, payload = decode(good)
    forged = f"{segment({**header, 'alg': 'none'})}.{segment(payload)}.{good.split('.')[2]}"
    assert_invalid_token(auth_registry, forged, "algorithm not accepted")


def test_hs256_signed_with_the_public_key_from_the_jwks_is_rejected(auth_registry: AuthRegistry) -> None:
    """Algorithm confusion: the published public key used as an HMAC secret."""
    jwks = auth_registry.client.get("/.well-known/jwks.json").json()
    jwk = jwks["keys"][-1]
    secret = b64url_decode(jwk["x"])
    signing_input = (
        f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': jwk['kid']})}.{segment(standard_payload())}"
    )
    for candidate in (secret, jwk["x"].encode()):
        mac = hmac.new(candidate, signing_input.encode(), hashlib.sha256).digest()
        assert_invalid_token(
            auth_registry, f"{signing_input}.{b64url(mac)}", "algorithm not accepted: 'HS256'"
        )


def test_rs256_is_rejected(auth_registry: AuthRegistry) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = auth_registry.identity.keys.active.kid
    signing_input = f"{segment({'alg': 'RS256', 'typ': 'JWT', 'kid': kid})}.{segment(standard_payload())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert_invalid_token(
        auth_registry, f"{signing_input}.{b64url(signature)}", "algorithm not accepted: 'RS256'"
    )


def test_es256_is_rejected(auth_registry: AuthRegistry) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    kid = auth_registry.identity.keys.active.kid
    signing_input = f"{segment({'alg': 'ES256', 'typ': 'JWT', 'kid': kid})}.{segment(standard_payload())}"
    signature = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    assert_invalid_token(
        auth_registry, f"{signing_input}.{b64url(signature)}", "algorithm not accepted: 'ES256'"
    )


# -- the key and the signature ------------------------------------------------------------------


def test_unknown_kid_is_rejected(auth_registry: AuthRegistry) -> None:
    own = Ed25519PrivateKey.generate()
    token = signed(own, {"alg": "EdDSA", "typ": "JWT", "kid": "not-a-key-of-ours"}, standard_payload())
    assert_invalid_token(auth_registry, token, "unknown key id: 'not-a-key-of-ours'")


def test_missing_kid_is_rejected(auth_registry: AuthRegistry) -> None:
    own = Ed25519PrivateKey.generate()
    token = signed(own, {"alg": "EdDSA", "typ": "JWT"}, standard_payload())
    assert_invalid_token(auth_registry, token, "unknown key id: None")


def test_own_key_under_our_kid_is_a_bad_signature(auth_registry: AuthRegistry) -> None:
    own = Ed25519PrivateKey.generate()
    kid = auth_registry.identity.keys.active.kid
    token = signed(own, {"alg": "EdDSA", "typ": "JWT", "kid": kid}, standard_payload())
    assert_invalid_token(auth_registry, token, "bad signature")


def test_a_flipped_signature_byte_is_rejected(auth_registry: AuthRegistry) -> None:
    good = auth_registry.token(f"repository:{REPO}:pull", login="alpha-writer")
    head, body, sig = good.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[10] ^= 0x01
    assert_invalid_token(auth_registry, f"{head}.{body}.{b64url(bytes(raw))}", "bad signature")


def test_an_edited_payload_widening_the_scope_is_rejected(auth_registry: AuthRegistry) -> None:
    good = auth_registry.token(f"repository:{REPO}:pull", login="alpha-reader")
    head, _, sig = good.split(".")
    _, payload = decode(good)
    assert payload["access"] == [{"type": "repository", "name": REPO, "actions": ["pull"]}]
    payload["access"] = [{"type": "repository", "name": REPO, "actions": ["pull", "push", "delete"]}]
    widened = f"{head}.{segment(payload)}.{sig}"
    assert_invalid_token(auth_registry, widened, "bad signature")
    # and the edited token does not push
    r = auth_registry.client.post(f"/v2/{REPO}/blobs/uploads/", headers=bearer(widened))
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"


def test_extra_header_parameters_are_rejected(auth_registry: AuthRegistry) -> None:
    token = ring_signed(auth_registry, standard_payload(), jku="http://evil.test/jwks.json")
    assert_invalid_token(auth_registry, token, "unexpected header parameters")


@pytest.mark.parametrize("token", ["garbage", "a.b", "a.b.c.d", "!!.??.**", ""])
def test_malformed_tokens_are_rejected(auth_registry: AuthRegistry, token: str) -> None:
    if not token:  # an empty Bearer is no token at all: the plain challenge
        r = auth_registry.client.get("/v2/", headers={"authorization": "Bearer "})
        assert r.status_code == 401
        assert "error" not in challenge(r)
        return
    r = auth_registry.client.get("/v2/", headers=bearer(token))
    assert r.status_code == 401
    assert error_code(r) == "UNAUTHORIZED"
    assert challenge(r)["error"] == "invalid_token"


# -- time ---------------------------------------------------------------------------------------


def issued(registry: AuthRegistry, *, now: float, lifetime: int = 300, **kw: Any) -> str:
    config = registry.identity.config
    subject = kw.pop("subject", "alpha-writer")
    found = registry.identity.accounts.get_principal(subject)
    assert found is not None
    principal = found[0]
    extra = {"pid": principal.id, "acct": principal.account, "gen": principal.token_generation}
    token, _ = tokens.issue(
        registry.identity.keys,
        issuer=kw.pop("issuer", config.issuer),
        subject=subject,
        audience=kw.pop("audience", config.service),
        lifetime=lifetime,
        access=kw.pop("access", [Scope("repository", REPO, frozenset({"pull"}))]),
        extra=kw.pop("extra", extra),
        now=now,
        **kw,
    )
    return token


def test_expired_is_rejected(auth_registry: AuthRegistry) -> None:
    # expired 31 s ago: past the 30 s leeway
    token = issued(auth_registry, now=time.time() - 300 - 31)
    assert_invalid_token(auth_registry, token, "expired")


def test_expired_within_the_leeway_is_accepted(auth_registry: AuthRegistry) -> None:
    token = issued(auth_registry, now=time.time() - 300 - 10)
    assert auth_registry.client.get("/v2/", headers=bearer(token)).status_code == 200


def test_not_yet_valid_beyond_the_leeway_is_rejected(auth_registry: AuthRegistry) -> None:
    token = issued(auth_registry, now=time.time() + 120)
    assert_invalid_token(auth_registry, token, "not yet valid")


def test_nbf_alone_in_the_future_is_rejected(auth_registry: AuthRegistry) -> None:
    now = int(time.time())
    token = ring_signed(auth_registry, standard_payload(iat=now, nbf=now + 120, exp=now + 600))
    assert_invalid_token(auth_registry, token, "not yet valid")


def test_not_yet_valid_within_the_leeway_is_accepted(auth_registry: AuthRegistry) -> None:
    token = issued(auth_registry, now=time.time() + 10)
    assert auth_registry.client.get("/v2/", headers=bearer(token)).status_code == 200
    r = auth_registry.client.get(f"/v2/{REPO}/tags/list", headers=bearer(token))
    assert r.status_code == 404  # authorized; the repository does not exist
    assert error_code(r) == "NAME_UNKNOWN"


def test_missing_exp_is_rejected(auth_registry: AuthRegistry) -> None:
    payload = standard_payload()
    del payload["exp"]
    assert_invalid_token(auth_registry, ring_signed(auth_registry, payload), "missing or malformed")


# -- audience and issuer ------------------------------------------------------------------------


def test_wrong_audience_is_rejected(auth_registry: AuthRegistry) -> None:
    token = issued(auth_registry, now=time.time(), audience="other-registry")
    assert_invalid_token(auth_registry, token, "wrong audience: 'other-registry'")


def test_a_login_password_is_not_a_registry_token(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.post("/api/v1/auth/login-password", auth=("alpha-writer", "secret-pw"))
    assert r.status_code == 200, r.text
    assert_invalid_token(auth_registry, r.json()["password"], "wrong audience: 'shipyard/login'")


def test_a_refresh_token_is_not_a_registry_token(auth_registry: AuthRegistry) -> None:
    r = auth_registry.client.post(
        "/token",
        data={
            "grant_type": "password",
            "username": "alpha-writer",
            "password": "secret-pw",
            "service": "shipyard",
            "access_type": "offline",
            "scope": f"repository:{REPO}:pull",
        },
    )
    assert r.status_code == 200, r.text
    assert_invalid_token(auth_registry, r.json()["refresh_token"], "wrong audience: 'shipyard/refresh'")


def test_wrong_issuer_is_rejected(auth_registry: AuthRegistry) -> None:
    token = issued(auth_registry, now=time.time(), issuer="someone-else")
    assert_invalid_token(auth_registry, token, "wrong issuer: 'someone-else'")


def test_a_malformed_access_claim_is_rejected(auth_registry: AuthRegistry) -> None:
    token = ring_signed(auth_registry, standard_payload(access=["repository:alpha/app:push"]))
    assert_invalid_token(auth_registry, token, "malformed access claim")


# -- scope --------------------------------------------------------------------------------------


def assert_insufficient_scope(
    registry: AuthRegistry, response: httpx.Response, scope: str, principal: str
) -> None:
    assert response.status_code == 401, response.text
    assert error_code(response) == "UNAUTHORIZED"
    params = challenge(response)
    assert params["realm"] == "http://registry.test/token"
    assert params["service"] == "shipyard"
    assert params["scope"] == scope
    assert params["error"] == "insufficient_scope"
    detail = response.json()["errors"][0]["detail"]
    assert detail["scope"] == scope


def test_a_pull_token_does_not_push(auth_registry: AuthRegistry, caplog: pytest.LogCaptureFixture) -> None:
    token = auth_registry.token(f"repository:{REPO}:pull", login="alpha-writer")
    marker = auth_registry.mark()
    with caplog.at_level(logging.WARNING, logger="shipyard.audit"):
        r = auth_registry.client.post(f"/v2/{REPO}/blobs/uploads/", headers=bearer(token))
        assert_insufficient_scope(auth_registry, r, f"repository:{REPO}:pull,push", "alpha-writer")
        r = auth_registry.client.put(
            f"/v2/{REPO}/manifests/latest",
            headers={**bearer(token), "content-type": "application/vnd.oci.image.manifest.v1+json"},
            content=b"{}",
        )
        assert_insufficient_scope(auth_registry, r, f"repository:{REPO}:pull,push", "alpha-writer")
        r = auth_registry.client.delete(f"/v2/{REPO}/manifests/latest", headers=bearer(token))
        assert_insufficient_scope(auth_registry, r, f"repository:{REPO}:delete", "alpha-writer")
    events = [e for e in auth_registry.audit_since(marker) if e["event"] == "access-denied"]
    assert [e["action"] for e in events] == [f"push {REPO}", f"push {REPO}", f"delete {REPO}"]
    for event in events:
        assert event["principal"] == "alpha-writer"
        assert event["source"] == SOURCE
        assert event["reason"]
    logged = [r.getMessage() for r in caplog.records if r.name == "shipyard.audit"]
    assert any(
        m.startswith("access-denied principal=alpha-writer") and f"source={SOURCE}" in m and "push" in m
        for m in logged
    ), logged


def test_a_token_of_account_a_does_not_open_a_repository_of_account_b(auth_registry: AuthRegistry) -> None:
    beta_writer = auth_registry.authed(
        auth_registry.token("repository:beta/private:pull,push", login="beta-writer")
    )
    push_blob(beta_writer, "beta/private", b"beta's secret blob")
    # alpha's writer asks for beta's repository: the token grants nothing there
    marker = auth_registry.mark()
    r = auth_registry.token_response("repository:beta/private:pull,push", login="alpha-writer")
    assert r.status_code == 200
    _, payload = decode(r.json()["token"])
    assert payload.get("access", []) == []
    scope_denied = [e for e in auth_registry.audit_since(marker) if e["event"] == "scope-denied"]
    assert scope_denied and scope_denied[-1]["principal"] == "alpha-writer"
    assert scope_denied[-1]["action"] == "repository:beta/private:pull,push"
    assert scope_denied[-1]["source"] == SOURCE
    token = r.json()["token"]
    marker = auth_registry.mark()
    r = auth_registry.client.get("/v2/beta/private/tags/list", headers=bearer(token))
    assert_insufficient_scope(auth_registry, r, "repository:beta/private:pull", "alpha-writer")
    r = auth_registry.client.post("/v2/beta/private/blobs/uploads/", headers=bearer(token))
    assert_insufficient_scope(auth_registry, r, "repository:beta/private:pull,push", "alpha-writer")
    # nor does a token for alpha's own repository, used on beta's
    own = auth_registry.token(f"repository:{REPO}:pull,push", login="alpha-writer")
    r = auth_registry.client.post("/v2/beta/private/blobs/uploads/", headers=bearer(own))
    assert_insufficient_scope(auth_registry, r, "repository:beta/private:pull,push", "alpha-writer")
    denied = [e for e in auth_registry.audit_since(marker) if e["event"] == "access-denied"]
    assert [e["action"] for e in denied] == [
        "pull beta/private",
        "push beta/private",
        "push beta/private",
    ]
    assert all(e["principal"] == "alpha-writer" and e["source"] == SOURCE for e in denied)


def test_token_rejection_is_logged_to_the_audit_logger(
    auth_registry: AuthRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    token = issued(auth_registry, now=time.time(), issuer="mallory")
    with caplog.at_level(logging.WARNING, logger="shipyard.audit"):
        r = auth_registry.client.get("/v2/", headers=bearer(token))
    assert r.status_code == 401
    messages = [r.getMessage() for r in caplog.records if r.name == "shipyard.audit"]
    assert any(
        m.startswith("token-rejected") and f"source={SOURCE}" in m and "wrong issuer" in m for m in messages
    ), messages
    # the client is told nothing of why
    assert "mallory" not in r.text and "issuer" not in r.text
    assert json.loads(r.text)["errors"][0]["message"] == "authentication required"
