"""The `shipyard` command: serve, migrate, config check, purge-uploads, gc, and the management commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from shipyard import __version__
from shipyard.config import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "database_url": getattr(args, "database_url", None),
        "storage_backend": getattr(args, "storage_backend", None),
        "workers": getattr(args, "workers", None),
        "tls_cert": getattr(args, "tls_cert", None),
        "tls_key": getattr(args, "tls_key", None),
        "insecure_no_auth": getattr(args, "insecure_no_auth", None),
        "embedded_worker": False if getattr(args, "no_worker", False) else None,
    }
    return load_settings(args.config, **overrides)


def _configure_logging(settings: Settings) -> None:
    from shipyard.app import quiet_libraries
    from shipyard.server.config import configure_logging

    configure_logging(settings.log_level)
    quiet_libraries(settings.log_level)


def cmd_serve(args: argparse.Namespace) -> int:
    from shipyard.app import build
    from shipyard.server import ServerConfig

    settings = _settings(args)
    _configure_logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SettingsError("invalid setting tls_cert/tls_key: give both or neither")
    # migrate, create the signing key and the admin user once here, before any worker starts
    app = build(settings, run_migrations=True)
    try:
        admin_password = None
        if app.identity is not None:
            secret = settings.admin_password.get_secret_value() if settings.admin_password else None
            admin_password = app.identity.bootstrap(secret)
    finally:
        app.close()
    os.environ.update(settings.to_environment())
    cert = settings.tls_cert.resolve() if settings.tls_cert else None
    key = settings.tls_key.resolve() if settings.tls_key else None
    if cert is None and not _is_loopback(settings.host):
        log.warning(
            "serving plain HTTP on %s, which is not a loopback address: credentials and tokens will cross "
            "the network in clear text; give --tls-cert and --tls-key",
            settings.host,
        )
    config = ServerConfig(
        app="shipyard.app:asgi_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        tls_cert=str(cert) if cert else None,
        tls_key=str(key) if key else None,
        log_level=settings.log_level,
        event_loop=settings.event_loop,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        keep_alive_timeout=settings.keep_alive_timeout_seconds,
        max_connections=settings.max_connections,
        forwarded_allow_ips=settings.forwarded_networks,
        log_format=settings.log_format,
        access_log=settings.access_log,
        # printed by the supervisor once every worker serves: a banner before the port is bound would
        # tell people to log in to a server that may never start
        banner=_banner(settings, admin_password),
        # a process of its own, watched and restarted by the supervisor as the server workers are: a job
        # that blocks or crashes takes no request handling with it (the settings reach it in SHIPYARD_*)
        companions=((sys.executable, "-m", "shipyard", "worker"),) if settings.embedded_worker else (),
    )
    _fresh_metrics_directory(settings)
    # the supervisor only starts and watches the workers: it execs into a process of its own (the same
    # pid) that never imports the application, 13 MiB instead of the ~95 MiB this one holds by now
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # the config goes through a pipe, not the command line that any user can read in the process list:
    # the banner may hold the first start's admin password
    reader, writer = os.pipe()
    os.write(writer, config.to_json().encode())  # a few KiB: well within a pipe's buffer
    os.close(writer)
    os.set_inheritable(reader, True)
    os.execv(sys.executable, [sys.executable, "-m", "shipyard.server", "--config-fd", str(reader)])


def _fresh_metrics_directory(settings: Settings) -> None:
    """The workers' metric files live here; counts of an earlier run must not add to this one's."""
    import shutil

    from shipyard.app import MULTIPROCESS_DIR_VARIABLE

    directory = (settings.data_dir / "metrics").resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(directory)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client_host(host: str) -> str:
    """A host a client can connect to: a wildcard address is where the server listens, not a
    destination, so clients on this machine are pointed at loopback."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _banner(settings: Settings, admin_password: str | None) -> str:
    address = f"{_client_host(settings.host)}:{settings.port}"
    tls = settings.tls_cert is not None
    scheme = "https" if tls else "http"
    lines = [
        f"Shipyard {__version__} on {scheme}://{address} "
        f"(database {_redacted(settings.resolved_database_url)}, blobs in {settings.resolved_storage_path})"
    ]
    if settings.host in ("0.0.0.0", "::"):
        lines.append(f"  (on every address: other machines use this machine's name, port {settings.port})")
    # podman, skopeo and buildah trust a CA given with --cert-dir: a directory holding the CA's ca.crt
    # and no other key (a lone .key there is taken for a client certificate's); plain HTTP needs
    # --tls-verify=false; docker trusts 127.0.0.0/8 over HTTP by default
    flag = " --cert-dir CADIR" if tls else " --tls-verify=false"
    skopeo_flag = " --dest-cert-dir CADIR" if tls else " --dest-tls-verify=false"
    if settings.insecure_no_auth:
        lines.append("WARNING: authentication is OFF (--insecure-no-auth): anyone can push, pull and delete.")
    else:
        if admin_password is not None:
            lines.append(
                "First start: created the account 'admin' with the user 'admin' and this password, "
                f"shown once:\n    {admin_password}"
            )
        lines.append("Log in, then push and pull, for example:")
        if tls:
            lines.append("  (CADIR: a directory holding a copy of the CA certificate as ca.crt)")
        lines.append(f"  podman login{flag} -u admin {address}")
        lines.append(f"  skopeo login{flag} -u admin {address}")
        lines.append(f"  docker login -u admin {address}")
    lines.append(f"  skopeo copy{skopeo_flag} oci:./layout:latest docker://{address}/admin/myapp:latest")
    lines.append(f"  podman push{flag} myapp:latest {address}/admin/myapp:latest")
    if not settings.insecure_no_auth:
        cacert = " --cacert ./certs/ca.crt" if tls else ""
        lines.append(
            f"Manage accounts and repositories with the CLI: SHIPYARD_REGISTRY={scheme}://{address} "
            f"SHIPYARD_USER=admin shipyard accounts list{cacert}"
        )
    return "\n".join(lines)


def cmd_keys(args: argparse.Namespace) -> int:
    from shipyard.app import make_identity
    from shipyard.auth.keys import SigningKeyError
    from shipyard.db.engine import make_engine

    settings = _settings(args)
    engine = make_engine(settings.resolved_database_url)
    try:
        keys = make_identity(settings, engine).keys
        if args.keys_command == "rotate":
            try:
                key = keys.rotate()
            except SigningKeyError as exc:
                print(f"shipyard: {exc}", file=sys.stderr)
                return 1
            print(f"new signing key {key.kid}; older keys verify until their tokens expire, then retire")
        elif args.keys_command == "retire":
            retired = keys.retire_expired()
            print(f"retired {len(retired)} signing keys" + (f": {', '.join(retired)}" if retired else ""))
        for signing_key in keys.all():
            state = "active" if signing_key.superseded_at is None else "verifying only"
            origin = "signing_key_file" if signing_key.from_file else "keys_dir"
            print(f"{signing_key.kid}  {state}  {origin}")
    finally:
        engine.dispose()
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from shipyard.auth.certs import issue_server_certificate

    hosts = args.host or ["127.0.0.1", "localhost"]
    issued = issue_server_certificate(args.dir, hosts)
    address = args.address or f"{hosts[0]}:5000"
    print(
        f"CA certificate:     {issued.ca_cert}\n"
        f"server certificate: {issued.server_cert} (for {', '.join(hosts)})\n"
        f"server key:         {issued.server_key}\n\n"
        f"Serve:   shipyard serve --tls-cert {issued.server_cert} --tls-key {issued.server_key}\n"
        "Trust the CA:\n"
        f"  podman, buildah, skopeo:  mkdir -p DIR && cp {issued.ca_cert} DIR/ca.crt, then --cert-dir DIR\n"
        f"                           (or system-wide: /etc/containers/certs.d/{address}/ca.crt)\n"
        f"  docker:                   /etc/docker/certs.d/{address}/ca.crt\n"
        f"  curl:                     --cacert {issued.ca_cert}"
    )
    return 0


def cmd_login_password(args: argparse.Namespace) -> int:
    import base64
    import json
    import ssl
    import urllib.error
    import urllib.request

    from shipyard.cli.manage import ApiError, read_password, unreachable

    try:
        password = args.password or read_password(args.user)
    except ApiError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return 2
    request = urllib.request.Request(
        args.registry.rstrip("/") + "/api/v1/auth/login-password",
        method="POST",
        data=b"",
        headers={"authorization": "Basic " + base64.b64encode(f"{args.user}:{password}".encode()).decode()},
    )
    context = ssl.create_default_context(cafile=str(args.cacert)) if args.cacert else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        from shipyard.cli.manage import _message

        print(f"shipyard: the registry refused: {_message(exc.read())}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"shipyard: {unreachable(args.registry, exc)}", file=sys.stderr)
        return 1
    if args.quiet:
        print(document["password"])
    else:
        print(
            f"{document['password']}\n\nvalid until {document['expires_at']}; log in with the user name "
            f"{document['username']!r}, e.g.\n  shipyard login-password ... -q | "
            f"podman login -u {document['username']} --password-stdin HOST",
            file=sys.stderr if not sys.stdout.isatty() else sys.stdout,
        )
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
    failures = 0
    checks = (
        ("database", _database_problem(settings), _redacted(settings.resolved_database_url)),
        ("blob store", _storage_problem(settings), settings.storage_backend),
    )
    for what, problem, where in checks:
        print(f"{what}: {problem or f'ok ({where})'}")
        failures += problem is not None
    if failures:
        print("configuration is NOT usable", file=sys.stderr)
        return 1
    print("configuration is valid")
    return 0


def _database_problem(settings: Settings) -> str | None:
    """Why the database cannot serve (unreachable, refused, or migrations behind), or None."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    from shipyard.db import migrate
    from shipyard.db.engine import make_engine

    url = make_url(settings.resolved_database_url)
    shown = _redacted(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        # checking creates nothing: the first start makes the file, in a directory it must be able to make
        problem = _directory_problem(Path(url.database).parent)
        if problem is None:
            print(f"note: {shown} does not exist yet; `shipyard serve` or `shipyard migrate` creates it")
        return problem
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        # a host that does not answer would otherwise hold the check for the system's TCP timeout
        url = url.update_query_dict({"connect_timeout": "5"})
    engine = make_engine(url.render_as_string(hide_password=False), pool_size=1)
    try:
        pending = migrate.pending(engine)
    except sa_exc.SQLAlchemyError as exc:
        return f"cannot use {shown}: {_first_line(exc)}"
    finally:
        engine.dispose()
    if pending:
        print(f"note: the schema of {shown} is behind; `shipyard migrate` or `shipyard serve` updates it")
    return None


def _storage_problem(settings: Settings) -> str | None:
    if settings.storage_backend != "filesystem":
        return None
    return _directory_problem(settings.resolved_storage_path)


def _directory_problem(root: Path) -> str | None:
    """Why `root` cannot be used (or created) as a directory to write in, or None."""
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{root} cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{root} is not writable (checked {existing})"
    return None


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


def cmd_admin_reset_password(args: argparse.Namespace) -> int:
    """Offline, on the database: a lost admin password is replaced without a running server."""
    from shipyard.app import build
    from shipyard.auth.credentials import hash_secret, new_secret

    settings = _settings(args)
    _configure_logging(settings)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < 8:
            print("shipyard: the new password must have at least 8 characters", file=sys.stderr)
            return 2
    else:
        password = new_secret(18)
    app = build(settings, run_migrations=True)
    try:
        if app.identity is None:
            print("shipyard: authentication is off (insecure_no_auth): there is no password", file=sys.stderr)
            return 2
        accounts = app.identity.accounts
        found = accounts.get_principal(args.user)
        if found is None or found[0].kind != "user":
            print(f"shipyard: no user {args.user!r}", file=sys.stderr)
            return 1
        # a new generation ends the login passwords issued under the old password
        accounts.update_principal(args.user, secret_hash=hash_secret(password), bump_generation=True)
        accounts.audit(
            "password-reset",
            principal=args.user,
            source="cli@local",
            action="reset-password",
            reason="offline reset",
        )
    finally:
        app.close()
    if args.password_stdin:
        print(f"the password of {args.user} is reset")
    else:
        print(f"new password of {args.user}, shown once:\n    {password}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import select
    import signal
    import threading

    from shipyard.app import build_worker
    from shipyard.db import migrate

    settings = _settings(args)
    _configure_logging(settings)
    extra = {kind: _load_handler(kind, target) for kind, target in map(_handler_option, args.extra_handler)}
    app = build_worker(settings, extra_handlers=extra)
    try:
        if migrate.pending(app.engine):
            print(
                "shipyard: the database schema is behind: run `shipyard migrate` (or `shipyard serve`) first",
                file=sys.stderr,
            )
            return 1
        worker = app.worker
        for signum in (signal.SIGTERM, signal.SIGINT):
            # stop leasing; the job that runs now finishes (its lease expires if it outlasts our killer)
            signal.signal(signum, lambda _signum, _frame: worker.stop())
        if args.lifeline_fd is not None:
            lifeline = args.lifeline_fd

            def watch() -> None:
                # nothing is ever written: readable means end of file, the supervisor is gone. The
                # server workers' event loops may have made the shared descriptor non-blocking.
                while True:
                    select.select([lifeline], [], [])
                    try:
                        if not os.read(lifeline, 1):
                            break
                    except BlockingIOError:
                        continue
                    except OSError:
                        break
                log.warning("the supervisor is gone: the worker stops")
                worker.stop()

            threading.Thread(target=watch, name="shipyard-lifeline", daemon=True).start()
        worker.run(announce=args.lifeline_fd is None)
        log.info("worker %s stopped", worker.owner)
    finally:
        app.close()
    return 0


def _handler_option(text: str) -> tuple[str, str]:
    kind, sep, target = text.partition("=")
    if not sep or not kind or ":" not in target:
        raise SettingsError(f"--extra-handler takes KIND=MODULE:FUNCTION, not {text!r}")
    return kind, target


def _load_handler(kind: str, target: str) -> Callable[[dict[str, Any]], object]:
    import importlib

    module_name, _, attribute = target.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"--extra-handler {kind}={target}: {exc}") from None
    if not callable(handler):
        raise SettingsError(f"--extra-handler {kind}={target}: not callable")
    return cast(Callable[[dict[str, Any]], object], handler)


def cmd_purge_uploads(args: argparse.Namespace) -> int:
    from shipyard.app import build
    from shipyard.services.access import SYSTEM

    settings = _settings(args)
    _configure_logging(settings)
    app = build(settings, run_migrations=True)
    try:
        seconds = args.older_than if args.older_than is not None else settings.upload_max_age_seconds
        purged = app.registry.purge_uploads(SYSTEM, timedelta(seconds=seconds))
    finally:
        app.close()
    print(f"purged {purged} abandoned uploads older than {seconds} s")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from shipyard.app import build, make_collector
    from shipyard.cli.gc import run_gc

    settings = _settings(args)
    _configure_logging(settings)
    app = build(settings, run_migrations=True)
    try:
        return run_gc(make_collector(settings, app.registry), dry_run=args.dry_run)
    finally:
        app.close()


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
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="DEVELOPMENT ONLY: no authentication at all",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="run no job worker beside the server (run `shipyard worker` elsewhere)",
    )
    serve.set_defaults(func=cmd_serve)

    work = sub.add_parser(
        "worker",
        help="run background jobs (upload purge, schedules, ...) from the queue every worker shares",
    )
    common(work)
    work.add_argument(
        "--extra-handler",
        action="append",
        default=[],
        metavar="KIND=MODULE:FUNCTION",
        help="also run jobs of KIND with this function of an installed module (repeatable)",
    )
    work.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    work.set_defaults(func=cmd_worker)

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

    gc = sub.add_parser(
        "gc", help="collect garbage now: unused blobs and links, and untagged manifests where asked"
    )
    common(gc)
    gc.add_argument("--dry-run", action="store_true", help="print what would be freed, by account")
    gc.set_defaults(func=cmd_gc)

    admin = sub.add_parser("admin", help="offline administration, on the database")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    reset = admin_sub.add_parser(
        "reset-password",
        help="give a user (default admin) a new password; works with the server stopped or running",
    )
    common(reset)
    reset.add_argument("--user", default="admin", help="the user's login (default admin)")
    reset.add_argument(
        "--password-stdin", action="store_true", help="read the new password from stdin (else generate one)"
    )
    reset.set_defaults(func=cmd_admin_reset_password)

    keys = sub.add_parser("keys", help="token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name, text in (
        ("list", "list the keys"),
        ("rotate", "add a new signing key"),
        ("retire", "delete keys whose tokens have all expired"),
    ):
        k = keys_sub.add_parser(name, help=text)
        common(k)
        k.set_defaults(func=cmd_keys)

    certs = sub.add_parser("certs", help="create a development CA and a server certificate")
    certs.add_argument(
        "--dir", type=Path, default=Path("./certs"), help="where to write them (default ./certs)"
    )
    certs.add_argument("--host", action="append", help="DNS name or IP of the server (repeatable)")
    certs.add_argument("--address", help="host:port clients use, for the trust instructions")
    certs.set_defaults(func=cmd_certs)

    lp = sub.add_parser("login-password", help="get a 12-hour password for docker/podman/skopeo login")
    lp.add_argument("--registry", required=True, help="registry URL, e.g. https://127.0.0.1:5000")
    lp.add_argument("-u", "--user", required=True, help="user name or access key id")
    lp.add_argument("-p", "--password", help="password or secret (or SHIPYARD_PASSWORD, or a prompt)")
    lp.add_argument("--cacert", type=Path, help="CA certificate to trust")
    lp.add_argument("-q", "--quiet", action="store_true", help="print only the password")
    lp.set_defaults(func=cmd_login_password)

    from shipyard.cli.jobs import register as register_jobs
    from shipyard.cli.manage import register

    register(sub)
    register_jobs(sub)
    from shipyard.cli import webhooks

    webhooks.register(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe can still be handled, not at interpreter exit
        return code
    except SettingsError as exc:
        print(f"shipyard: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say, and nowhere to say it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # a person reads this: one line, and the traceback only when they ask for it
        log.debug("the command failed", exc_info=True)
        print(f"shipyard: {_failure(exc)}", file=sys.stderr)
        if not log.isEnabledFor(logging.DEBUG):
            print("shipyard: (SHIPYARD_LOG_LEVEL=debug shows the details)", file=sys.stderr)
        return 1


def _failure(exc: Exception) -> str:
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.SQLAlchemyError):
        return f"the database failed: {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return _first_line(exc) if str(exc) else type(exc).__name__
