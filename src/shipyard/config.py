"""Settings: defaults < config file (TOML) < SHIPYARD_* environment < command-line flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "SHIPYARD_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(5000, ge=1, le=65535, description="port to listen on")
    data_dir: Path = Field(Path("./data"), description="where the database and blobs live by default")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL: sqlite:///PATH (default: DATA_DIR/shipyard.db) or postgresql://...",
    )
    storage_backend: Literal["filesystem", "memory"] = Field("filesystem", description="blob store driver")
    storage_path: Path | None = Field(
        None, description="root of the filesystem blob store (default: DATA_DIR)"
    )
    storage_direct_io: bool = Field(
        True, description="large uploads reach the filesystem store in direct writes, around the page cache"
    )
    workers: int = Field(1, ge=1, le=64, description="server worker processes")
    threads: int = Field(16, ge=1, le=256, description="threads per worker for database and file work")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="the workers' event loop; auto is uvloop when installed"
    )
    delete_enabled: bool = Field(True, description="allow DELETE of manifests, tags and blobs")
    upload_max_age_seconds: int = Field(86400, ge=60, description="abandoned uploads are purged after this")
    max_blob_bytes: int = Field(
        64 * 1024**3, ge=1, description="largest blob an upload may grow to; larger ones get 413"
    )
    max_uploads_per_principal: int = Field(
        100, ge=1, description="upload sessions one principal may hold open; past it 429 TOOMANYREQUESTS"
    )
    upload_purge_interval_seconds: int = Field(600, ge=1, description="how often to look for them")
    gc_grace_seconds: float = Field(
        86400.0, ge=0, description="GC never collects a blob or a blob link younger than this"
    )
    gc_interval_seconds: int = Field(3600, ge=1, description="how often the scheduled GC runs")
    pull_flush_interval_seconds: float = Field(10.0, gt=0, description="how often pull times reach SQL")
    embedded_worker: bool = Field(
        True, description="`shipyard serve` runs a job worker beside its server workers (--no-worker: not)"
    )
    job_lease_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="a running job's lease: renewed while it runs; expires this long after its worker died",
    )
    job_poll_seconds: float = Field(1.0, gt=0, le=60, description="how often an idle worker looks for jobs")
    job_max_attempts: int = Field(
        5, ge=1, le=100, description="attempts before a failing job is kept as dead"
    )
    job_retention_seconds: int = Field(
        7 * 86400, ge=60, description="finished jobs (done, dead, cancelled) are deleted after this"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    insecure_no_auth: bool = Field(
        False, description="DEVELOPMENT ONLY: accept every request without authentication"
    )
    admin_password: SecretStr | None = Field(
        None, description="password of the admin user created at first start (else one is generated)"
    )
    public_url: str | None = Field(
        None, description="the registry's URL as clients see it, for token realms (default: from the request)"
    )
    auth_service: str = Field("shipyard", min_length=1, description="token service name (audience)")
    auth_issuer: str = Field("shipyard", min_length=1, description="token issuer")
    token_lifetime_seconds: int = Field(300, ge=30, le=86400, description="registry token lifetime")
    login_password_lifetime_seconds: int = Field(
        43200, ge=60, le=7 * 86400, description="lifetime of `shipyard login-password` passwords"
    )
    keys_dir: Path | None = Field(None, description="signing keys (default: DATA_DIR/keys), mode 0700/0600")
    signing_key_file: Path | None = Field(
        None,
        description=(
            "PEM file (Ed25519, mode 0600 or stricter) with the private key that signs tokens, e.g. a "
            "mounted secret; the keys in keys_dir then only verify. Re-read every 30 s"
        ),
    )
    principal_max_age_seconds: float = Field(
        5.0,
        ge=0.1,
        le=300,
        description=(
            "how long a disabled principal or account, or a bumped token generation, may go unnoticed: "
            "login passwords and registry tokens are checked against an in-memory view of principals, "
            "updated at once by changes made in the same process and refreshed from the database at "
            "least this often for changes made by other workers or processes"
        ),
    )
    login_max_failures: int = Field(
        10, ge=1, le=100_000, description="failed logins per (login, source) within the window before 429"
    )
    login_max_source_failures: int = Field(
        100,
        ge=1,
        le=1_000_000,
        description="failed logins per source, any logins, within the window before 429",
    )
    login_failure_window_seconds: float = Field(
        300.0, gt=0, le=86400, description="the sliding window of the failed-login limits"
    )
    login_limiter_max_entries: int = Field(
        50_000, ge=100, le=10_000_000, description="(login, source) pairs and sources the limiter keeps"
    )
    login_hash_workers: int = Field(2, ge=1, le=64, description="threads per worker that hash passwords")
    login_hash_max_waiting: int = Field(
        8, ge=0, le=10_000, description="logins that may wait for a hashing thread; past it, 429 at once"
    )
    failed_auth_audit_window_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="failed logins and refused tokens are audited once per source and reason per window, "
        "with a count; 0 writes each",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain to serve HTTPS")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert")
    header_timeout_seconds: float = Field(30.0, gt=0, description="a request's line and headers within this")
    body_timeout_seconds: float = Field(
        60.0, gt=0, description="a request body must bring at least 16 KiB per this long, else 408"
    )
    keep_alive_timeout_seconds: float = Field(
        75.0, gt=0, description="an idle connection is closed after this"
    )
    # 1000: each connection may hold its socket, a blob file and, while sending it, a second descriptor of
    # the socket; the worker raises its soft descriptor limit to fit (see the worker), and 1000 stays within
    # the common hard limit of 4096 with room left for the database and the application's own files
    max_connections: int = Field(
        1000, ge=1, description="open connections per worker; past it, 503 and close"
    )
    forwarded_allow_ips: str = Field(
        "",
        description=(
            "comma-separated addresses or networks of proxies whose X-Forwarded-* and Forwarded headers are "
            "believed; empty: none (not even loopback)"
        ),
    )
    log_format: Literal["text", "json"] = Field("text", description="access log lines: text or json")
    access_log: bool = Field(True, description="one log line per request on the shipyard.access logger")
    metrics_access: Literal["loopback", "any", "token"] = Field(
        "loopback",
        description=(
            "who may read /metrics without a token: loopback clients, any client, or none (token only); "
            "a client with metrics_token may always read it"
        ),
    )
    metrics_token: SecretStr | None = Field(
        None, description="bearer token that may read /metrics (compared in constant time, never logged)"
    )

    webhook_allow_private_networks: bool = Field(
        False,
        description=(
            "let webhooks deliver to loopback, link-local and private addresses (off: such targets are "
            "refused, against server-side request forgery)"
        ),
    )
    webhook_retry_base_seconds: float = Field(
        5.0,
        gt=0,
        le=30,
        description="a failed webhook delivery is retried after this, then twice as long each time",
    )
    webhook_retry_window_seconds: float = Field(
        86400.0, gt=0, description="a webhook delivery is retried for this long after its first attempt"
    )
    event_retention_seconds: int = Field(
        2592000,
        ge=3600,
        description="events (and their webhook deliveries) are deleted this long after they happened",
    )
    webhook_dispatch_interval_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="how often a job worker looks for new events and due webhook deliveries (cluster-wide)",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="a webhook receiver must answer within this (connecting: 5 s at most)"
    )

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        if isinstance(value, str):
            for item in value.split(","):
                if item.strip():
                    ipaddress.ip_network(item.strip(), strict=False)  # ValueError names the bad entry
        return value

    @property
    def forwarded_networks(self) -> tuple[str, ...]:
        return tuple(item.strip() for item in self.forwarded_allow_ips.split(",") if item.strip())

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme = url.partition(":")[0].partition("+")[0].lower()
        if scheme not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {scheme!r}: give sqlite:///PATH or postgresql://...")
        return url

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'shipyard.db').resolve()}"

    @property
    def resolved_keys_dir(self) -> Path:
        return (self.keys_dir or self.data_dir / "keys").resolve()

    @property
    def resolved_storage_path(self) -> Path:
        return (self.storage_path or self.data_dir).resolve()

    def to_environment(self) -> dict[str, str]:
        """The settings as SHIPYARD_* variables, to hand them to worker processes."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None or name == "admin_password":  # workers never need the bootstrap secret
                continue
            if isinstance(value, Path):
                value = value.resolve()
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[f"{ENV_PREFIX}{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


class SettingsError(Exception):
    """A bad configuration, with a message that names each offending setting."""


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    path = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    if path is not None and not Path(path).is_file():
        raise SettingsError(f"config file not found: {path}")
    values = {k: v for k, v in overrides.items() if v is not None}

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls))
            return tuple(sources)

    try:
        loaded = FileSettings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    return Settings.model_construct(**loaded.model_dump())


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(settings)"
        env = f"{ENV_PREFIX}{field.upper()}"
        lines.append(f"invalid setting {field} ({env}): {error['msg']}")
    return "\n".join(lines)
