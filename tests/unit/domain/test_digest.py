from __future__ import annotations

import hashlib

import pytest

from shipyard.domain.digest import SUPPORTED_ALGORITHMS, Digest, is_digest, new_hasher
from shipyard.domain.errors import DigestInvalid

SHA256 = hashlib.sha256(b"x").hexdigest()
SHA512 = hashlib.sha512(b"x").hexdigest()


def test_parse_sha256() -> None:
    digest = Digest.parse(f"sha256:{SHA256}")
    assert digest == Digest("sha256", SHA256)
    assert str(digest) == f"sha256:{SHA256}"


def test_parse_sha512() -> None:
    digest = Digest.parse(f"sha512:{SHA512}")
    assert (digest.algorithm, digest.encoded) == ("sha512", SHA512)


def test_digests_are_values() -> None:
    assert Digest.parse(f"sha256:{SHA256}") == Digest.parse(f"sha256:{SHA256}")
    assert len({Digest.parse(f"sha256:{SHA256}"), Digest("sha256", SHA256)}) == 1


def test_of_hashes_content() -> None:
    assert Digest.of(b"x") == Digest("sha256", SHA256)
    assert Digest.of(b"x", "sha512") == Digest("sha512", SHA512)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256",
        "sha256:",
        ":" + SHA256,
        SHA256,
        f"sha256::{SHA256}",
        f"SHA256:{SHA256}",  # the algorithm is lower case
        f"sha256 :{SHA256}",
        f"sha256: {SHA256}",
        f"sha256:{SHA256} ",
        f"sha256:{SHA256}\n",  # `$` would let a trailing newline through
        f"\nsha256:{SHA256}",
        f"sha256:{SHA256}/../x",
        f"sha-:{SHA256}",
        f"-sha256:{SHA256}",
        f"sha256+:{SHA256}",
        f"sha256:{SHA256[:10]}.{SHA256[10:]}",
    ],
)
def test_bad_grammar_is_rejected(value: str) -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        f"sha256:{SHA256.upper()}",  # the grammar allows upper case; sha256 is lower-case hex only
        f"sha256:{SHA256[:-1]}A",
        f"sha256:{SHA256[:-1]}",
        f"sha256:{SHA256}0",
        f"sha256:{SHA512}",
        f"sha512:{SHA256}",
        f"sha512:{SHA512.upper()}",
        f"sha256:{'g' * 64}",
        f"sha256:{'=' * 64}",
    ],
)
def test_bad_encodings_are_rejected(value: str) -> None:
    with pytest.raises(DigestInvalid, match="invalid sha"):
        Digest.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        f"md5:{hashlib.md5(b'x').hexdigest()}",
        f"sha384:{hashlib.sha384(b'x').hexdigest()}",
        "multi+part.algo_x:abc",
    ],
)
def test_unsupported_algorithms_are_rejected(value: str) -> None:
    with pytest.raises(DigestInvalid, match="unsupported digest algorithm"):
        Digest.parse(value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(DigestInvalid):
        Digest.parse(None)  # type: ignore[arg-type]
    with pytest.raises(DigestInvalid):
        Digest.parse(b"sha256:" + SHA256.encode())  # type: ignore[arg-type]


def test_new_hasher() -> None:
    assert SUPPORTED_ALGORITHMS == ("sha256", "sha512")
    for algorithm in SUPPORTED_ALGORITHMS:
        hasher = new_hasher(algorithm)
        hasher.update(b"x")
        assert hasher.hexdigest() == hashlib.new(algorithm, b"x").hexdigest()
    with pytest.raises(DigestInvalid, match="unsupported"):
        new_hasher("md5")
    with pytest.raises(DigestInvalid, match="unsupported"):
        Digest.of(b"x", "md5")


def test_a_copied_hasher_goes_on_independently() -> None:
    hasher = new_hasher("sha256")
    hasher.update(b"a")
    copy = hasher.copy()
    copy.update(b"b")
    assert hasher.hexdigest() == hashlib.sha256(b"a").hexdigest()
    assert copy.hexdigest() == hashlib.sha256(b"ab").hexdigest()


def test_is_digest() -> None:
    assert is_digest(f"sha256:{SHA256}")
    assert is_digest("anything:else")
    assert not is_digest("latest")
