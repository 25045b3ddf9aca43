"""The signing key from a secrets file (`signing_key_file`): it signs, the keys directory's keys keep
verifying, and a file that others may read, or that holds no Ed25519 key, stops the start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shipyard.app import build
from shipyard.auth.keys import KeyRing, SigningKeyError
from shipyard.cli.main import main
from shipyard.config import Settings, SettingsError
from tests.auth.conftest import BASE, bearer, decode
from tests.support.asgi import SyncASGITransport


def write_key(
    path: Path,
    private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey | None = None,
    mode: int = 0o600,
) -> Path:
    key = private or Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    os.chmod(path, mode)
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SHIPYARD_"):
            monkeypatch.delenv(name)


class App:
    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.app = build(Settings(data_dir=data_dir, **settings), run_migrations=True)
        assert self.app.identity is not None
        self.identity = self.app.identity
        self.identity.bootstrap("pw")
        self.client = httpx.Client(transport=SyncASGITransport(self.app.asgi), base_url=BASE)

    def token(self) -> str:
        r = self.client.get("/token", params={"service": "shipyard"}, auth=("admin", "pw"))
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def close(self) -> None:
        self.client.close()
        self.app.close()


@pytest.fixture
def apps() -> Iterator[list[App]]:
    started: list[App] = []
    yield started
    for app in started:
        app.close()


def test_the_key_file_signs_and_the_directory_keys_keep_verifying(tmp_path: Path, apps: list[App]) -> None:
    data_dir = tmp_path / "data"
    before = App(data_dir)
    apps.append(before)
    old_token = before.token()
    old_kid = before.identity.keys.active.kid
    before.close()
    apps.remove(before)

    key_file = write_key(tmp_path / "signing.pem")
    after = App(data_dir, signing_key_file=key_file)
    apps.append(after)
    keys = after.identity.keys
    assert keys.active.from_file and keys.active.kid != old_kid
    new_token = after.token()
    assert decode(new_token)[0]["kid"] == keys.active.kid
    for token in (old_token, new_token):
        assert after.client.get("/v2/", headers=bearer(token)).status_code == 200
    published = {k["kid"] for k in after.client.get("/.well-known/jwks.json").json()["keys"]}
    assert published == {old_kid, keys.active.kid}
    # the directory's key only verifies now, and the file's key is not copied into the directory
    old = keys.get(old_kid)
    assert old is not None and old.superseded_at is not None
    assert sorted(p.stem for p in keys.directory.glob("*.pem")) == [old_kid]
    # rotating is the file's owner's business
    with pytest.raises(SigningKeyError, match="signing_key_file"):
        keys.rotate()


def test_a_replaced_key_file_signs_and_the_old_key_keeps_verifying(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "signing.pem")
    ring = KeyRing(tmp_path / "keys", max_token_lifetime=300, signing_key_file=key_file)
    first = ring.active.kid
    write_key(key_file)
    ring.refresh()
    assert ring.active.kid != first and ring.active.from_file
    assert ring.get(first) is not None


def test_a_key_file_readable_by_others_stops_the_start(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "signing.pem", mode=0o644)
    with pytest.raises(SettingsError) as raised:
        build(Settings(data_dir=tmp_path / "data", signing_key_file=key_file), run_migrations=True)
    message = str(raised.value)
    assert "signing_key_file (SHIPYARD_SIGNING_KEY_FILE)" in message
    assert "0644" in message and "chmod 600" in message
    os.chmod(key_file, 0o640)
    with pytest.raises(SettingsError, match="group or others"):
        build(Settings(data_dir=tmp_path / "data", signing_key_file=key_file))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a key\n", "not an unencrypted PEM private key"),
        (b"", "not an unencrypted PEM private key"),
        (None, "only Ed25519 keys are supported"),
    ],
)
def test_a_key_file_without_an_ed25519_key_stops_the_start(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    key_file = tmp_path / "signing.pem"
    if content is None:
        write_key(key_file, ec.generate_private_key(ec.SECP256R1()))
    else:
        key_file.write_bytes(content)
        os.chmod(key_file, 0o600)
    with pytest.raises(SettingsError, match=expected) as raised:
        build(Settings(data_dir=tmp_path / "data", signing_key_file=key_file), run_migrations=True)
    assert "BEGIN" not in str(raised.value)  # no key material in the message


def test_a_missing_key_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        build(Settings(data_dir=tmp_path / "data", signing_key_file=tmp_path / "absent.pem"))


def test_keys_list_shows_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    assert main(["keys", "list", "--data-dir", str(data_dir)]) == 0
    (directory_kid, state, origin) = capsys.readouterr().out.split()
    assert (state, origin) == ("active", "keys_dir")
    key_file = write_key(tmp_path / "signing.pem")
    monkeypatch.setenv("SHIPYARD_SIGNING_KEY_FILE", str(key_file))
    assert main(["keys", "list", "--data-dir", str(data_dir)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [directory_kid, "verifying", "only", "keys_dir"] in lines
    assert any(line[1:] == ["active", "signing_key_file"] for line in lines), lines
    assert main(["keys", "rotate", "--data-dir", str(data_dir)]) == 1
    assert "signing_key_file" in capsys.readouterr().err
    os.chmod(key_file, 0o644)
    assert main(["keys", "list", "--data-dir", str(data_dir)]) == 2
    assert "SHIPYARD_SIGNING_KEY_FILE" in capsys.readouterr().err
