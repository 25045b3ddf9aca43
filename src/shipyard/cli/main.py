"""The `shipyard` command: serve, migrate, config check, purge-uploads."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

from shipyard import __version__
from shipyard.config import Settings, SettingsError, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "database_url": getattr(args, "database_url", None),
        "storage_backend": getattr(args, "storage_backend", None),
        "workers": getattr(args, "workers", None),
    }
    return load_settings(args.config, **overrides)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    from shipyard.app import build

    settings = _settings(args)
    _configure_logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # migrate once here, before any worker starts
    build(settings, run_migrations=True).close()
    os.environ.update(settings.to_environment())
    address = f"{settings.host}:{settings.port}"
    print(
        f"Shipyard {__version__} on http://{address} "
        f"(database {_redacted(settings.resolved_database_url)}, blobs in {settings.resolved_storage_path})\n"
        "Authentication is not enabled yet: no login is needed. Push and pull with, for example:\n"
        f"  skopeo copy --dest-tls-verify=false oci:./layout:latest docker://{address}/myapp:latest\n"
        f"  podman push --tls-verify=false myapp:latest {address}/myapp:latest\n"
        f"  docker push {address}/myapp:latest   (loopback counts as an insecure registry)",
        flush=True,
    )
    server = Granian(
        "shipyard.app:asgi_from_environment",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        log_access=False,
        log_level=LogLevels(settings.log_level),
    )
    server.serve()
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    from shipyard.app import build

    settings = _settings(args)
    _configure_logging(settings)
    build(settings, run_migrations=True).close()
    print(f"database at {_redacted(settings.resolved_database_url)} is up to date")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for name, value in settings.model_dump().items():
        if name == "database_url" and value:
            value = _redacted(value)
        print(f"{name} = {value}")
    print(f"database: {_redacted(settings.resolved_database_url)}")
    print("configuration is valid")
    return 0


def cmd_purge_uploads(args: argparse.Namespace) -> int:
    from shipyard.app import build

    settings = _settings(args)
    _configure_logging(settings)
    app = build(settings, run_migrations=True)
    try:
        seconds = args.older_than if args.older_than is not None else settings.upload_max_age_seconds
        purged = app.registry.purge_uploads(timedelta(seconds=seconds))
    finally:
        app.close()
    print(f"purged {purged} abandoned uploads older than {seconds} s")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="shipyard", description="Shipyard container registry")
    top.add_argument("--version", action="version", version=f"shipyard {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML config file (or SHIPYARD_CONFIG_FILE)")
        p.add_argument("--data-dir", type=Path, help="data directory (default ./data)")
        p.add_argument("--database-url", help="database URL (default sqlite in the data directory)")
        p.add_argument("--storage-backend", help="blob store driver: filesystem or memory")

    serve = sub.add_parser("serve", help="run the registry")
    common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 5000)")
    serve.add_argument("--workers", type=int, help="worker processes")
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="apply database migrations")
    common(mig)
    mig.set_defaults(func=cmd_migrate)

    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration and print it")
    common(check)
    check.set_defaults(func=cmd_config_check)

    purge = sub.add_parser("purge-uploads", help="remove abandoned uploads")
    common(purge)
    purge.add_argument("--older-than", type=int, help="seconds (default: upload_max_age_seconds)")
    purge.set_defaults(func=cmd_purge_uploads)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"shipyard: configuration error:\n{exc}", file=sys.stderr)
        return 2
