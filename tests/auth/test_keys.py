"""Signing keys: named by kid in every token, secret on disk (0600 in a 0700 dir), rotation that keeps
old tokens valid, retirement that ends them, and a JWKS with the public keys only."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from shipyard.auth import tokens
from shipyard.auth.keys import KeyRing, b64url
from tests.auth.conftest import AuthRegistry, bearer, challenge, decode


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_token_header_names_the_signing_key(fresh_registry: AuthRegistry) -> None:
    token = fresh_registry.token(login="alpha-writer")
    header, _ = decode(token)
    keys = fresh_registry.identity.keys
    assert header["kid"] == keys.active.kid
    assert keys.get(header["kid"]) is keys.active


def test_key_files_are_private(fresh_registry: AuthRegistry) -> None:
    directory = fresh_registry.identity.keys.directory
    assert directory == (fresh_registry.data_dir / "keys").resolve()
    fresh_registry.identity.keys.rotate()
    assert mode(directory) == 0o700
    pems = sorted(directory.glob("*.pem"))
    assert len(pems) == 2
    for path in [*pems, directory / "keys.json"]:
        assert mode(path) == 0o600, path


def test_loose_modes_are_tightened_on_load(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys", max_token_lifetime=60)
    pem = next((tmp_path / "keys").glob("*.pem"))
    pem.chmod(0o644)
    (tmp_path / "keys").chmod(0o755)
    again = KeyRing(tmp_path / "keys", max_token_lifetime=60)
    assert again.active.kid == ring.active.kid
    assert mode(pem) == 0o600
    assert mode(tmp_path / "keys") == 0o700


def test_rotation_keeps_old_tokens_and_signs_new_ones_with_the_new_key(fresh_registry: AuthRegistry) -> None:
    keys = fresh_registry.identity.keys
    old_kid = keys.active.kid
    old = fresh_registry.token("repository:alpha/app:pull", login="alpha-writer")
    new_key = keys.rotate()
    assert new_key.kid != old_kid
    assert keys.active.kid == new_key.kid
    assert fresh_registry.client.get("/v2/", headers=bearer(old)).status_code == 200
    new = fresh_registry.token("repository:alpha/app:pull", login="alpha-writer")
    assert decode(new)[0]["kid"] == new_key.kid
    assert fresh_registry.client.get("/v2/", headers=bearer(new)).status_code == 200
    # a second process (`shipyard keys rotate`) sees the same keys
    other = KeyRing(keys.directory, max_token_lifetime=keys.max_token_lifetime)
    assert other.active.kid == new_key.kid
    assert {k.kid for k in other.all()} == {old_kid, new_key.kid}
    assert tokens.verify(other, old, issuer="shipyard", audience="shipyard").subject == "alpha-writer"


def test_retired_keys_end_their_tokens(fresh_registry: AuthRegistry) -> None:
    keys = fresh_registry.identity.keys
    old_kid = keys.active.kid
    # never presented before retirement, so not in the verification cache
    old = fresh_registry.token("repository:alpha/app:pull", login="alpha-writer")
    password = fresh_registry.client.post(
        "/api/v1/auth/login-password", auth=("alpha-writer", "secret-pw")
    ).json()["password"]
    keys.rotate()
    # not yet: superseded, but tokens it signed may still be valid
    assert keys.retire_expired() == []
    assert keys.retire_expired(now=time.time() + keys.max_token_lifetime - 60) == []
    assert keys.retire_expired(now=time.time() + keys.max_token_lifetime + 1) == [old_kid]
    assert keys.get(old_kid) is None
    assert not (keys.directory / f"{old_kid}.pem").exists()
    assert old_kid not in json.loads((keys.directory / "keys.json").read_text())
    marker = fresh_registry.mark()
    r = fresh_registry.client.get("/v2/", headers=bearer(old))
    assert r.status_code == 401
    assert challenge(r)["error"] == "invalid_token"
    assert fresh_registry.audit_since(marker)[-1]["reason"] == f"unknown key id: {old_kid!r}"
    r = fresh_registry.token_response(login="shipyard", password=password)
    assert r.status_code == 401
    # the active key is never retired
    assert keys.retire_expired(now=time.time() + 10 * keys.max_token_lifetime) == []
    assert fresh_registry.client.get("/v2/", headers=bearer(fresh_registry.token())).status_code == 200


def test_the_jwks_publishes_public_keys_only(fresh_registry: AuthRegistry) -> None:
    keys = fresh_registry.identity.keys
    keys.rotate()
    for path in ("/.well-known/jwks.json", "/token/jwks"):
        r = fresh_registry.client.get(path)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        document = r.json()
        assert [k["kid"] for k in document["keys"]] == [k.kid for k in keys.all()]
        for jwk, key in zip(document["keys"], keys.all(), strict=True):
            assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
            assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
            public = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            assert jwk["x"] == b64url(public)
            private = key.private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            assert b64url(private) not in r.text
            assert "PRIVATE" not in r.text
    # needs no credentials; writes are refused
    r = fresh_registry.client.post("/.well-known/jwks.json")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    r = fresh_registry.client.put("/token")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


def test_refresh_picks_up_keys_of_another_process(fresh_registry: AuthRegistry) -> None:
    keys = fresh_registry.identity.keys
    other = KeyRing(keys.directory, max_token_lifetime=keys.max_token_lifetime)
    added = other.rotate()
    assert keys.get(added.kid) is None
    keys.refresh()
    assert keys.active.kid == added.kid
    assert decode(fresh_registry.token())[0]["kid"] == added.kid
