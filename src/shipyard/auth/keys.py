"""Signing keys (Ed25519), kept secret in the data directory with mode 0600, with rotation.

The newest key signs; older keys keep verifying until every token they signed has expired, then retire.
Instead, the signing key can come from a secrets file that the operator manages (`signing_key_file`);
the keys in the directory then only verify.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SigningKeyError(Exception):
    """A signing key file that must not be used: unreadable, readable by others, or not a key."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    created_at: float
    # when a newer key took over signing; None for the active key
    superseded_at: float | None = None
    # the key came from the secrets file, not from the keys directory
    from_file: bool = False

    @functools.cached_property
    def public(self) -> Ed25519PublicKey:
        # derived once: deriving it costs about as much as a verification
        return self.private.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def jwk(self) -> dict[str, Any]:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(raw),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }


def _kid_for(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64url(hashlib.sha256(raw).digest()[:12])


def load_key_file(path: Path) -> SigningKey:
    """The private key in a PEM file (PKCS#8 or OpenSSL's format) that only its owner may read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        mode = status.st_mode
        if mode & 0o077:
            raise SigningKeyError(
                f"{path} is readable or writable by group or others (mode {mode & 0o777:04o}); "
                "make it readable by the owner only: chmod 600"
            )
        try:
            data = handle.read()
        except OSError as exc:
            raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # the message of cryptography's error names no key material
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(private).__name__}; only Ed25519 keys are supported")
    return SigningKey(_kid_for(private), private, status.st_mtime, from_file=True)


class KeyRing:
    """Keys in `directory`: `<kid>.pem` (PKCS#8, 0600) and `keys.json` (creation and supersession times);
    with `signing_key_file`, that file's key signs and the directory's keys only verify."""

    def __init__(
        self, directory: Path, *, max_token_lifetime: float, signing_key_file: Path | None = None
    ) -> None:
        self.directory = directory
        self.max_token_lifetime = max_token_lifetime
        self.signing_key_file = signing_key_file
        self._keys: dict[str, SigningKey] = {}
        self.reload()

    @property
    def _index(self) -> Path:
        return self.directory / "keys.json"

    def reload(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        meta = json.loads(self._index.read_text()) if self._index.exists() else {}
        keys: dict[str, SigningKey] = {}
        for path in sorted(self.directory.glob("*.pem")):
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
                log.warning("signing key %s was readable by others; fixed its mode to 0600", path.name)
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            kid = _kid_for(private)
            info = meta.get(kid, {})
            keys[kid] = SigningKey(
                kid, private, float(info.get("created_at", path.stat().st_mtime)), info.get("superseded_at")
            )
        if self.signing_key_file is not None:
            from_file = load_key_file(self.signing_key_file)
            now = time.time()
            superseded = False
            for kid, key in list(keys.items()):
                if key.superseded_at is None and kid != from_file.kid:
                    keys[kid] = SigningKey(kid, key.private, key.created_at, now)
                    superseded = True
            # a key the file held before it was replaced keeps verifying (until this process restarts)
            for kid, key in self._keys.items():
                if key.from_file and kid != from_file.kid and kid not in keys:
                    keys[kid] = SigningKey(kid, key.private, key.created_at, key.superseded_at or now, True)
            keys[from_file.kid] = from_file
            self._keys = keys
            if superseded:  # from now on the file's key signs: the directory's retire in due time
                self._save_index()
            return
        self._keys = keys
        if not self._keys:
            self.rotate()

    def _save_index(self) -> None:
        meta = {
            k.kid: {"created_at": k.created_at, "superseded_at": k.superseded_at}
            for k in self._keys.values()
            if not k.from_file
        }
        temp = self._index.with_suffix(".tmp")
        temp.write_text(json.dumps(meta, indent=2))
        os.chmod(temp, 0o600)
        os.replace(temp, self._index)

    @property
    def active(self) -> SigningKey:
        current = [k for k in self._keys.values() if k.superseded_at is None]
        if not current:
            raise RuntimeError("no active signing key")
        return max(current, key=lambda k: k.created_at)

    def get(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    def all(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    def rotate(self) -> SigningKey:
        """Add a new signing key; the previous ones only verify from now on."""
        if self.signing_key_file is not None:
            raise SigningKeyError(
                "the signing key comes from signing_key_file: put a new key in that file to rotate "
                "(copy the old one into the keys directory so that its tokens keep verifying)"
            )
        now = time.time()
        private = Ed25519PrivateKey.generate()
        kid = _kid_for(private)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = self.directory / f"{kid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        for old in list(self._keys.values()):
            if old.superseded_at is None:
                self._keys[old.kid] = SigningKey(old.kid, old.private, old.created_at, now)
        key = SigningKey(kid, private, now)
        self._keys[kid] = key
        self._save_index()
        return key

    def retire_expired(self, now: float | None = None) -> list[str]:
        """Delete keys superseded longer ago than the longest token lifetime: nothing they signed is valid."""
        now = time.time() if now is None else now
        retired = []
        for key in list(self._keys.values()):
            if key.superseded_at is not None and now - key.superseded_at > self.max_token_lifetime:
                (self.directory / f"{key.kid}.pem").unlink(missing_ok=True)
                del self._keys[key.kid]
                retired.append(key.kid)
        if retired:
            self._save_index()
        return retired

    def refresh(self) -> None:
        """Pick up keys another process added (`shipyard keys rotate`) and retire expired ones."""
        self.reload()
        self.retire_expired()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.all()]}
