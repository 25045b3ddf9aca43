"""tokens.issue/verify directly: the strict checks, each with its reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shipyard.auth import tokens
from shipyard.auth.keys import KeyRing, b64url
from shipyard.auth.scopes import Scope
from shipyard.auth.tokens import TokenRejected
from tests.auth.conftest import segment, standard_payload

PULL = Scope("repository", "alpha/app", frozenset({"pull"}))


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys", max_token_lifetime=600)


def verify(ring: KeyRing, token: str, **kw: Any) -> tokens.Claims:
    return tokens.verify(
        ring, token, issuer=kw.pop("issuer", "shipyard"), audience=kw.pop("audience", "shipyard"), **kw
    )


def issue(ring: KeyRing, **kw: Any) -> str:
    token, _ = tokens.issue(
        ring,
        issuer=kw.pop("issuer", "shipyard"),
        subject=kw.pop("subject", "alpha-writer"),
        audience=kw.pop("audience", "shipyard"),
        lifetime=kw.pop("lifetime", 300),
        access=kw.pop("access", [PULL]),
        **kw,
    )
    return token


def forge(ring: KeyRing, payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    key = ring.active
    head = segment(header if header is not None else {"alg": "EdDSA", "typ": "JWT", "kid": key.kid})
    body = segment(payload)
    return f"{head}.{body}.{b64url(key.sign(f'{head}.{body}'.encode()))}"


def test_round_trip(ring: KeyRing) -> None:
    token, issued = tokens.issue(
        ring,
        issuer="shipyard",
        subject="s",
        audience="shipyard",
        lifetime=300,
        access=[PULL],
        extra={"pid": 7},
    )
    claims = verify(ring, token)
    assert claims == issued
    assert claims.access == (PULL,)
    assert claims.extra == {"pid": 7}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"now_offset": -331}, "expired"),
        ({"now_offset": 31}, "not yet valid"),
        ({"issuer": "x"}, "wrong issuer: 'x'"),
        ({"audience": "x"}, "wrong audience: 'x'"),
    ],
)
def test_each_check_says_why(ring: KeyRing, kwargs: dict[str, Any], reason: str) -> None:
    # Whole seconds, and the check at a fixed instant: the claims are whole seconds,
    # and a slow machine must not move the clock between issue and check.
    now = int(time.time())
    token = issue(ring, now=now + kwargs.pop("now_offset", 0), **kwargs)
    with pytest.raises(TokenRejected) as caught:
        verify(ring, token, now=now)
    assert caught.value.reason == reason


@pytest.mark.parametrize("offset", [-329, 29])
def test_the_leeway_is_30_seconds(ring: KeyRing, offset: int) -> None:
    now = int(time.time())
    verify(ring, issue(ring, now=now + offset), now=now)


def test_a_list_audience_must_contain_ours(ring: KeyRing) -> None:
    verify(ring, forge(ring, standard_payload(aud=["other", "shipyard"])))
    with pytest.raises(TokenRejected, match="wrong audience"):
        verify(ring, forge(ring, standard_payload(aud=["other"])))


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none"},
        {"alg": "HS256"},
        {"alg": "RS256"},
        {"alg": "ES256"},
        {"alg": "eddsa"},
        {"alg": "EdDSA", "kid": "nope"},
        {"alg": "EdDSA", "crit": ["exp"]},
        {"alg": "EdDSA", "jwk": {}},
    ],
)
def test_headers_other_than_ours_are_refused(ring: KeyRing, header: dict[str, Any]) -> None:
    full = {"typ": "JWT", "kid": ring.active.kid, **header}
    with pytest.raises(TokenRejected):
        verify(ring, forge(ring, standard_payload(), full))


def test_a_foreign_key_is_refused(ring: KeyRing) -> None:
    own = Ed25519PrivateKey.generate()
    head = segment({"alg": "EdDSA", "typ": "JWT", "kid": ring.active.kid})
    body = segment(standard_payload())
    token = f"{head}.{body}.{b64url(own.sign(f'{head}.{body}'.encode()))}"
    with pytest.raises(TokenRejected, match="bad signature"):
        verify(ring, token)


@pytest.mark.parametrize(
    "payload",
    [
        {"iat": "soon"},
        {"exp": None},
        {"sub": 42},
        {"access": "repository:alpha/app:pull"},
        {"access": [{"type": "repository", "name": "alpha/app", "actions": "pull"}]},
    ],
)
def test_malformed_claims_are_refused(ring: KeyRing, payload: dict[str, Any]) -> None:
    with pytest.raises(TokenRejected):
        verify(ring, forge(ring, standard_payload(**payload)))


def test_json_that_is_not_an_object_is_refused(ring: KeyRing) -> None:
    key = ring.active
    head, body = b64url(b"[1]"), segment(standard_payload())
    token = f"{head}.{body}.{b64url(key.sign(f'{head}.{body}'.encode()))}"
    with pytest.raises(TokenRejected, match="must be objects"):
        verify(ring, token)


def test_padded_or_standard_base64_is_refused(ring: KeyRing) -> None:
    token = issue(ring)
    head, body, sig = token.split(".")
    with pytest.raises(TokenRejected, match="undecodable"):
        verify(ring, f"{head}=.{body}.{sig}")
