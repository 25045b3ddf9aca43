"""Content digests (`algorithm:encoded`) as the OCI image-spec defines them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from shipyard.domain.errors import DigestInvalid

_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
_ENCODED = {
    "sha256": re.compile(r"^[a-f0-9]{64}\Z"),
    "sha512": re.compile(r"^[a-f0-9]{128}\Z"),
}
SUPPORTED_ALGORITHMS = tuple(_ENCODED)


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Parse and validate; raise DigestInvalid for bad grammar or an unsupported algorithm."""
        if not isinstance(value, str) or not _GRAMMAR.match(value):
            raise DigestInvalid(f"invalid digest: {value!r}")
        algorithm, encoded = value.split(":", 1)
        pattern = _ENCODED.get(algorithm)
        if pattern is None:
            raise DigestInvalid(f"unsupported digest algorithm: {algorithm!r}")
        if not pattern.match(encoded):
            raise DigestInvalid(f"invalid {algorithm} digest: {value!r}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())


def new_hasher(algorithm: str) -> Hasher:
    if algorithm not in _ENCODED:
        raise DigestInvalid(f"unsupported digest algorithm: {algorithm!r}")
    return hashlib.new(algorithm)


def is_digest(reference: str) -> bool:
    """A manifest reference is a digest when it contains a colon (tags cannot)."""
    return ":" in reference
