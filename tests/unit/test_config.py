from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipyard.config import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SHIPYARD_* variables from the caller's shell, and a working directory of our own."""
    for name in list(os.environ):
        if name.startswith("SHIPYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shipyard.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert type(settings) is Settings
    assert settings.host == "127.0.0.1"
    assert settings.port == 5000
    assert settings.data_dir == Path("data")
    assert settings.database_url is None
    assert settings.storage_backend == "filesystem"
    assert settings.storage_path is None
    assert settings.workers == 1
    assert settings.delete_enabled is True
    assert settings.log_level == "info"
    assert settings.max_blob_bytes == 64 * 1024**3
    assert settings.max_uploads_per_principal == 100
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'data' / 'shipyard.db'}"
    assert settings.resolved_storage_path == tmp_path.resolve() / "data"


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHIPYARD_PORT", "6000")
    monkeypatch.setenv("SHIPYARD_STORAGE_BACKEND", "memory")
    monkeypatch.setenv("SHIPYARD_DELETE_ENABLED", "false")
    monkeypatch.setenv("SHIPYARD_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SHIPYARD_STORAGE_PATH", str(tmp_path / "blobs"))
    monkeypatch.setenv("SHIPYARD_DATABASE_URL", "postgresql://db.example/shipyard")
    monkeypatch.setenv("SHIPYARD_PULL_FLUSH_INTERVAL_SECONDS", "2.5")
    settings = load_settings()
    assert settings.port == 6000
    assert settings.storage_backend == "memory"
    assert settings.delete_enabled is False
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.resolved_storage_path == tmp_path / "blobs"
    assert settings.resolved_database_url == "postgresql://db.example/shipyard"
    assert settings.pull_flush_interval_seconds == 2.5


def test_a_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'port = 6001\nstorage_backend = "memory"\nlog_level = "debug"\n')
    settings = load_settings(path)
    assert (settings.port, settings.storage_backend, settings.log_level) == (6001, "memory", "debug")
    assert load_settings(str(path)).port == 6001


def test_a_config_file_named_by_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHIPYARD_CONFIG_FILE", str(write_config(tmp_path, "workers = 4\n")))
    assert load_settings().workers == 4
    # an explicit file wins over the variable
    other = tmp_path / "other.toml"
    other.write_text("workers = 5\n")
    assert load_settings(other).workers == 5


def test_flags_override_the_environment_which_overrides_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_config(tmp_path, 'port = 6001\nhost = "0.0.0.0"\nworkers = 3\nstorage_backend = "memory"\n')
    monkeypatch.setenv("SHIPYARD_PORT", "6002")
    monkeypatch.setenv("SHIPYARD_WORKERS", "4")
    settings = load_settings(path, port=6003, host=None)
    assert settings.port == 6003  # flag
    assert settings.workers == 4  # environment
    assert settings.host == "0.0.0.0"  # file; a flag not given (None) does not count
    assert settings.storage_backend == "memory"  # file
    assert settings.threads == 16  # default


def test_a_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("SHIPYARD_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings()


def test_a_config_file_that_is_not_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port = [\n")
    with pytest.raises(SettingsError, match="not valid TOML") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="invalid setting storage_bakend "):
        load_settings(write_config(tmp_path, 'storage_bakend = "memory"\n'))


@pytest.mark.parametrize("where", ["environment", "file", "flag"])
def test_an_unknown_backend_names_the_setting(
    where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file: Path | None = None
    flags: dict[str, str] = {}
    if where == "environment":
        monkeypatch.setenv("SHIPYARD_STORAGE_BACKEND", "s3")
    elif where == "file":
        config_file = write_config(tmp_path, 'storage_backend = "s3"\n')
    else:
        flags["storage_backend"] = "s3"
    with pytest.raises(SettingsError) as caught:
        load_settings(config_file, **flags)
    message = str(caught.value)
    assert "storage_backend" in message
    assert "SHIPYARD_STORAGE_BACKEND" in message
    assert "'filesystem' or 'memory'" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "http"),
        ("WORKERS", "0"),
        ("THREADS", "many"),
        ("DELETE_ENABLED", "maybe"),
        ("UPLOAD_MAX_AGE_SECONDS", "10"),
        ("PULL_FLUSH_INTERVAL_SECONDS", "0"),
        ("LOG_LEVEL", "loud"),
        ("MAX_BLOB_BYTES", "0"),
        ("MAX_BLOB_BYTES", "64GiB"),
        ("MAX_UPLOADS_PER_PRINCIPAL", "0"),
    ],
)
def test_a_bad_value_names_the_setting(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"SHIPYARD_{variable}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"invalid setting {variable.lower()} (SHIPYARD_{variable}): ")


def test_every_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_PORT", "0")
    monkeypatch.setenv("SHIPYARD_WORKERS", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert {line.split()[2] for line in lines} == {"port", "workers"}


def test_to_environment_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings(
        port=6004, storage_backend="memory", delete_enabled=False, data_dir=Path("rel"), workers=2
    )
    environment = settings.to_environment()
    assert environment["SHIPYARD_DATA_DIR"] == str(tmp_path.resolve() / "rel")
    assert environment["SHIPYARD_DELETE_ENABLED"] == "false"
    assert "SHIPYARD_DATABASE_URL" not in environment  # None stays unset
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    again = load_settings()
    assert again.model_dump() == {**settings.model_dump(), "data_dir": tmp_path.resolve() / "rel"}
