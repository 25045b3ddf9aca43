"""Signed tokens: compact JWS (JWT) with EdDSA only, encoded and verified by PyJWT. Verification is
strict and says why it refused."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from shipyard.auth.keys import KeyRing, b64url_decode
from shipyard.auth.scopes import Scope, ScopeInvalid

ALGORITHM = "EdDSA"
LEEWAY_SECONDS = 30

# unpadded base64url only: a padded or standard-alphabet segment would decode too leniently
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HEADER_PARAMETERS = frozenset({"alg", "typ", "kid"})
_REGISTERED = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "access"})
# the library checks presence, signature, issuer and audience; the time window is checked here,
# against a clock the caller may fix (the library reads the wall clock itself)
_DECODE_OPTIONS: Any = {
    "require": ["exp", "iat", "iss", "sub", "aud"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


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
    token = jwt.encode(payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})
    return token, claims


def verify(keys: KeyRing, token: str, *, issuer: str, audience: str, now: float | None = None) -> Claims:
    if not _COMPACT.fullmatch(token):
        raise TokenRejected("not a compact JWS" if token.count(".") != 2 else "undecodable token")
    # The header is read here, once, to pick the key: the library's own header reader would check
    # the whole token's alphabet a second time, a third of the cost of a verification.
    try:
        header = json.loads(b64url_decode(token.partition(".")[0]))
    except (ValueError, UnicodeDecodeError):
        raise TokenRejected("undecodable token") from None
    if not isinstance(header, dict):
        raise TokenRejected("header and payload must be objects")
    # Only EdDSA: `none`, HMAC with a public key as the secret, and every other algorithm are refused
    # before the library sees the token, and the library is told the same.
    if header.get("alg") != ALGORITHM:
        raise TokenRejected(f"algorithm not accepted: {header.get('alg')!r}")
    if set(header) - _HEADER_PARAMETERS:
        raise TokenRejected("unexpected header parameters")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenRejected(f"unknown key id: {kid!r}")
    try:
        payload = jwt.decode(
            token,
            key.public,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options=_DECODE_OPTIONS,
        )
    except jwt.InvalidSignatureError:
        raise TokenRejected("bad signature") from None
    except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
        # raised after the signature held: the claims are the signer's, safe to name in the reason
        claims = jwt.decode(token, options={"verify_signature": False})
        if isinstance(exc, jwt.InvalidIssuerError):
            raise TokenRejected(f"wrong issuer: {claims.get('iss')!r}") from None
        raise TokenRejected(f"wrong audience: {claims.get('aud')!r}") from None
    except jwt.exceptions.InvalidSubjectError:
        raise TokenRejected("subject must be a string") from None
    except (jwt.MissingRequiredClaimError, jwt.exceptions.InvalidJTIError):
        raise TokenRejected("missing or malformed registered claims") from None
    except jwt.DecodeError as exc:
        raise TokenRejected(_decode_reason(exc)) from None
    except jwt.InvalidTokenError as exc:  # e.g. a `crit` header, had it passed the check above
        raise TokenRejected(f"invalid token: {exc}") from None
    return _claims(payload, audience, time.time() if now is None else now)


def _decode_reason(exc: jwt.DecodeError) -> str:
    return (
        "header and payload must be objects" if "must be a json object" in str(exc) else "undecodable token"
    )


def _claims(payload: dict[str, Any], audience: str, current: float) -> Claims:
    try:
        exp, iat = _seconds(payload["exp"]), _seconds(payload["iat"])
        nbf = _seconds(payload["nbf"]) if "nbf" in payload else iat
        iss, sub, jti = payload["iss"], payload["sub"], payload.get("jti", "")
    except (KeyError, TypeError, ValueError):
        raise TokenRejected("missing or malformed registered claims") from None
    if current > exp + LEEWAY_SECONDS:
        raise TokenRejected("expired")
    if current < nbf - LEEWAY_SECONDS or current < iat - LEEWAY_SECONDS:
        raise TokenRejected("not yet valid")
    if not isinstance(sub, str):
        raise TokenRejected("subject must be a string")
    try:
        access = tuple(Scope.from_claim(c) for c in payload.get("access", []))
    except ScopeInvalid as exc:
        raise TokenRejected(f"malformed access claim: {exc}") from None
    extra = {k: v for k, v in payload.items() if k not in _REGISTERED}
    return Claims(iss, sub, audience, iat, nbf, exp, str(jti), access, extra)


def _seconds(value: Any) -> int:
    # a boolean is an int to Python, not a NumericDate
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a NumericDate")
    return int(value)
