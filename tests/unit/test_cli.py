"""The `shipyard` command, run in-process."""

from __future__ import annotations

import io
import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import inspect

from shipyard import __version__
from shipyard.app import build
from shipyard.cli.main import main
from shipyard.config import Settings
from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.domain.errors import Unauthorized
from shipyard.services.access import SYSTEM
from tests.support.postgres import PostgresServer


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SHIPYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def printed(output: str) -> dict[str, str]:
    """`name = value` lines of `config check`."""
    return dict(line.split(" = ", 1) for line in output.splitlines() if " = " in line)


# -- config check --------------------------------------------------------------------------------


def test_config_check_connects_and_says_what_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    assert main(["config", "check", "--database-url", url, "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "database: ok" in out and "blob store: ok" in out
    assert "schema of" in out and "is behind" in out  # never migrated: serve or migrate will do it
    # a port where nothing listens: one line naming the database, no traceback
    bad = f"postgresql://postgres:hidden@127.0.0.1:{postgres.port + 1}/nowhere"
    assert main(["config", "check", "--database-url", bad]) == 1
    out, err = capsys.readouterr()
    [line] = [line for line in out.splitlines() if line.startswith("database:")]
    assert line.startswith("database: cannot use postgresql://postgres:***@127.0.0.1:")
    assert "hidden" not in out + err and "Traceback" not in out + err
    assert "NOT usable" in err


def test_config_check_reports_a_blob_store_it_cannot_write(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SHIPYARD_STORAGE_PATH", str(blocker / "x"))
    assert main(["config", "check", "--data-dir", str(tmp_path / "d")]) == 1
    out = capsys.readouterr().out
    assert f"blob store: {blocker / 'x'} cannot be created: {blocker} is not a directory" in out


def test_config_check_prints_the_defaults(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    values = printed(out)
    assert values["port"] == "5000"
    assert values["storage_backend"] == "filesystem"
    assert values["data_dir"] == "data"
    assert f"database: ok (sqlite:///{tmp_path.resolve() / 'data' / 'shipyard.db'})" in out
    assert out.rstrip().endswith("configuration is valid")
    assert err == ""
    assert not (tmp_path / "data").exists()  # checking creates nothing


def test_config_check_flags_over_environment_over_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "shipyard.toml"
    config.write_text('data_dir = "from-file"\nstorage_backend = "memory"\nworkers = 3\nthreads = 4\n')
    monkeypatch.setenv("SHIPYARD_DATA_DIR", "from-env")
    monkeypatch.setenv("SHIPYARD_WORKERS", "5")
    assert main(["config", "check", "--config", str(config), "--data-dir", "from-flag"]) == 0
    values = printed(capsys.readouterr().out)
    assert values["data_dir"] == "from-flag"
    assert values["workers"] == "5"
    assert values["storage_backend"] == "memory"
    assert values["threads"] == "4"


def test_config_check_reads_the_file_named_by_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "shipyard.toml"
    config.write_text("port = 6010\n")
    monkeypatch.setenv("SHIPYARD_CONFIG_FILE", str(config))
    assert main(["config", "check"]) == 0
    assert printed(capsys.readouterr().out)["port"] == "6010"


def test_config_check_hides_the_database_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_DATABASE_URL", "postgresql://shipyard:s3cret@127.0.0.1:1/shipyard")
    assert main(["config", "check"]) == 1  # nothing answers on port 1
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err
    assert "postgresql://shipyard:***@127.0.0.1:1/shipyard" in out


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--storage-backend", "s3"], {}, ["storage_backend", "SHIPYARD_STORAGE_BACKEND"]),
        ([], {"SHIPYARD_STORAGE_BACKEND": "s3"}, ["storage_backend", "SHIPYARD_STORAGE_BACKEND"]),
        ([], {"SHIPYARD_PORT": "http"}, ["port", "SHIPYARD_PORT"]),
        ([], {"SHIPYARD_THREADS": "0"}, ["threads", "SHIPYARD_THREADS"]),
        (["--database-url", "mysql://u:p@h/db"], {}, ["database_url", "unsupported database 'mysql'"]),
        (["--config", "missing.toml"], {}, ["config file not found: missing.toml"]),
        ([], {"SHIPYARD_CONFIG_FILE": "missing.toml"}, ["config file not found: missing.toml"]),
    ],
)
def test_config_check_fails_naming_the_setting(
    argv: list[str],
    env: dict[str, str],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["config", "check", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("shipyard: configuration error:\n")
    for name in names:
        assert name in err


def test_config_check_of_a_file_that_is_not_toml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("port = \n")
    assert main(["config", "check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"config file {config} is not valid TOML" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["config"], ["frobnicate"], ["migrate", "--port", "1"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "usage: shipyard" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"shipyard {__version__}"


# -- migrate -------------------------------------------------------------------------------------


def test_migrate_creates_the_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0
    database = data_dir / "shipyard.db"
    assert f"database at sqlite:///{database} is up to date" in capsys.readouterr().out
    with sqlite3.connect(database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alembic_version", "manifests", "tags", "upload_sessions"} <= tables
    engine = make_engine(f"sqlite:///{database}")
    try:
        migrate.check(engine)
    finally:
        engine.dispose()
    # again: nothing to do
    assert main(["migrate", "--data-dir", str(data_dir)]) == 0


def test_migrate_a_postgresql_database(
    capsys: pytest.CaptureFixture[str], postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    assert main(["migrate", "--data-dir", str(tmp_path / "data"), "--database-url", url]) == 0
    assert "is up to date" in capsys.readouterr().out
    engine = make_engine(url)
    try:
        assert "manifests" in inspect(engine).get_table_names()
        migrate.check(engine)
    finally:
        engine.dispose()


def test_migrate_with_a_bad_setting_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["migrate", "--data-dir", str(tmp_path / "data"), "--storage-backend", "tape"]) == 2
    assert "storage_backend" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


# -- purge-uploads -------------------------------------------------------------------------------


def start_upload(data_dir: Path) -> str:
    app = build(Settings(data_dir=data_dir), run_migrations=True)
    try:
        upload = app.registry.start_upload(SYSTEM, "repo")
        appender = app.registry.begin_append(SYSTEM, "repo", upload.id)
        appender.write(b"some bytes")
        appender.finish()
        return upload.id
    finally:
        app.close()


def upload_exists(data_dir: Path, upload_id: str) -> bool:
    with sqlite3.connect(data_dir / "shipyard.db") as conn:
        row = conn.execute("SELECT 1 FROM upload_sessions WHERE id = ?", (upload_id,)).fetchone()
    staged = (data_dir / "uploads" / upload_id).exists()
    assert staged == (row is not None), "the database and the store disagree"
    return staged


def test_purge_uploads_removes_stale_uploads_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    upload_id = start_upload(data_dir)
    assert upload_exists(data_dir, upload_id)
    assert main(["purge-uploads", "--data-dir", str(data_dir), "--older-than", "3600"]) == 0
    assert "purged 0 abandoned uploads older than 3600 s" in capsys.readouterr().out
    assert upload_exists(data_dir, upload_id)
    time.sleep(0.01)
    assert main(["purge-uploads", "--data-dir", str(data_dir), "--older-than", "0"]) == 0
    assert "purged 1 abandoned uploads older than 0 s" in capsys.readouterr().out
    assert not upload_exists(data_dir, upload_id)
    assert list((data_dir / "uploads").iterdir()) == []


def test_purge_uploads_defaults_to_the_configured_age(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    upload_id = start_upload(data_dir)
    monkeypatch.setenv("SHIPYARD_UPLOAD_MAX_AGE_SECONDS", "60")
    assert main(["purge-uploads", "--data-dir", str(data_dir)]) == 0
    assert "purged 0 abandoned uploads older than 60 s" in capsys.readouterr().out
    assert upload_exists(data_dir, upload_id)


def test_migrate_takes_percent_escapes_in_the_url(
    capsys: pytest.CaptureFixture[str], postgres: PostgresServer, tmp_path: Path
) -> None:
    """A password with an escaped '@' and a socket directory in ?host= used to crash Alembic's config."""
    name = postgres.create_database().rsplit("/", 1)[1]
    sockets = quote(str(postgres.root / "sockets"), safe="")
    url = f"postgresql://postgres:p%40ss%25w0rd@/{name}?host={sockets}&port={postgres.port}"
    assert main(["migrate", "--data-dir", str(tmp_path / "data"), "--database-url", url]) == 0
    out, err = capsys.readouterr()
    assert "is up to date" in out, err
    assert "p%40ss" not in out and "p@ss" not in out


def test_admin_reset_password_works_offline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    app = build(Settings(data_dir=data), run_migrations=True)
    try:
        assert app.identity is not None
        app.identity.bootstrap("the-lost-password")
    finally:
        app.close()
    assert main(["admin", "reset-password", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    generated = out.split("shown once:\n")[1].split()[0]
    monkeypatch.setattr("sys.stdin", io.StringIO("chosen-password-9\n"))
    assert main(["admin", "reset-password", "--data-dir", str(data), "--password-stdin"]) == 0
    assert "the password of admin is reset" in capsys.readouterr().out
    app = build(Settings(data_dir=data))
    try:
        identity = app.identity
        assert identity is not None
        assert identity.login("admin", "chosen-password-9", "test").login == "admin"
        for stale in ("the-lost-password", generated):
            with pytest.raises(Unauthorized):
                identity.login("admin", stale, "test")
    finally:
        app.close()
    assert main(["admin", "reset-password", "--data-dir", str(data), "--user", "nobody"]) == 1
    assert capsys.readouterr().err == "shipyard: no user 'nobody'\n"


def test_the_banner_points_clients_at_a_host_they_can_reach() -> None:
    from shipyard.cli.main import _banner

    text = _banner(Settings(host="0.0.0.0", port=5123), "first-password")
    assert "0.0.0.0" not in text
    assert "podman login --tls-verify=false -u admin 127.0.0.1:5123" in text
    assert "SHIPYARD_REGISTRY=http://127.0.0.1:5123 SHIPYARD_USER=admin shipyard accounts list" in text
    assert "first-password" in text
    tls = _banner(Settings(host="::", port=5123, tls_cert=Path("c.pem"), tls_key=Path("k.pem")), None)
    assert "podman login --cert-dir CADIR -u admin [::1]:5123" in tls
    assert "--tls-verify=false" not in tls and "https://[::1]:5123" in tls
    assert "--cacert ./certs/ca.crt" in tls
