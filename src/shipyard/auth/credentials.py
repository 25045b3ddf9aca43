"""Secrets: generation, and hashing with argon2 (passwords, access-key secrets, robot tokens)."""

from __future__ import annotations

import base64
import secrets as _random

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's argon2id floor (19 MiB, 2 passes) keeps a login well under 100 ms on these machines.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def verify_secret(stored_hash: str, secret: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_secret(nbytes: int = 30) -> str:
    return _random.token_urlsafe(nbytes)


def new_key_id(prefix: str = "SYK") -> str:
    """An access-key id: a fixed prefix and 16 base32 characters (not secret, safe to log)."""
    raw = base64.b32encode(_random.token_bytes(10)).decode().rstrip("=")
    return f"{prefix}{raw}"


# A hash to verify against when the principal does not exist, so that timing does not tell.
DUMMY_HASH = hash_secret(new_secret())
