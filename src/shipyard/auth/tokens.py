"""Signed tokens: compact JWS (JWT) with EdDSA only. Verification is strict and says why it refused."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shipyard.auth.keys import KeyRing, b64url, b64url_decode
from shipyard.auth.scopes import Scope, ScopeInvalid

ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 30


class TokenRejected(Exception):
    """A token that must not be honoured; `reason` is for the audit log, not for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    issuer: str
    subject: str
    audience: str
    issued_at: int
    not_before: int
    expires_at: int
    token_id: str
    access: tuple[Scope, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def issue(
    keys: KeyRing,
    *,
    issuer: str,
    subject: str,
    audience: str,
    lifetime: int,
    access: Iterable[Scope] = (),
    extra: dict[str, Any] | None = None,
    now: float | None = None,
) -> tuple[str, Claims]:
    issued = int(time.time() if now is None else now)
    claims = Claims(
        issuer=issuer,
        subject=subject,
        audience=audience,
        issued_at=issued,
        not_before=issued,
        expires_at=issued + lifetime,
        token_id=secrets.token_urlsafe(12),
        access=tuple(access),
        extra=dict(extra or {}),
    )
    payload: dict[str, Any] = {
        **claims.extra,
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": claims.issued_at,
        "nbf": claims.not_before,
        "exp": claims.expires_at,
        "jti": claims.token_id,
    }
    if claims.access:
        payload["access"] = [s.claim() for s in claims.access]
    key = keys.active
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": key.kid}
    signing_input = f"{_segment(header)}.{_segment(payload)}".encode("ascii")
    return f"{signing_input.decode('ascii')}.{b64url(key.sign(signing_input))}", claims


def _segment(document: dict[str, Any]) -> str:
    return b64url(json.dumps(document, separators=(",", ":"), sort_keys=True).encode())


def verify(keys: KeyRing, token: str, *, issuer: str, audience: str, now: float | None = None) -> Claims:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        payload = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError):
        raise TokenRejected("undecodable token") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise TokenRejected("header and payload must be objects")
    # Only EdDSA: `none`, HMAC with a public key as the secret, and every other algorithm are refused.
    if header.get("alg") != ALGORITHM:
        raise TokenRejected(f"algorithm not accepted: {header.get('alg')!r}")
    if set(header) - {"alg", "typ", "kid"} or "crit" in header:
        raise TokenRejected("unexpected header parameters")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenRejected(f"unknown key id: {kid!r}")
    if not key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii")):
        raise TokenRejected("bad signature")
    current = time.time() if now is None else now
    try:
        exp, iat = int(payload["exp"]), int(payload["iat"])
        nbf = int(payload["nbf"]) if "nbf" in payload else iat
        iss, sub, aud, jti = payload["iss"], payload["sub"], payload["aud"], payload.get("jti", "")
    except (KeyError, TypeError, ValueError):
        raise TokenRejected("missing or malformed registered claims") from None
    if current > exp + LEEWAY_SECONDS:
        raise TokenRejected("expired")
    if current < nbf - LEEWAY_SECONDS or current < iat - LEEWAY_SECONDS:
        raise TokenRejected("not yet valid")
    if iss != issuer:
        raise TokenRejected(f"wrong issuer: {iss!r}")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise TokenRejected(f"wrong audience: {aud!r}")
    if not isinstance(sub, str):
        raise TokenRejected("subject must be a string")
    try:
        access = tuple(Scope.from_claim(c) for c in payload.get("access", []))
    except ScopeInvalid as exc:
        raise TokenRejected(f"malformed access claim: {exc}") from None
    registered = {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "access"}
    extra = {k: v for k, v in payload.items() if k not in registered}
    return Claims(iss, sub, audience, iat, nbf, exp, str(jti), access, extra)
