"""The servers under test, each on loopback with its own data directory: Shipyard (embedded defaults),
Shipyard on PostgreSQL, CNCF Distribution, and nginx serving the same bytes as static files."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.postgres import PostgresServer
from tests.support.server import ServerProcess, free_port, start_server

from bench.procs import kill_pids, snapshot, stop_tree, tree_pids

# the admin's password of the Shipyard that runs with authentication (a throw-away loopback server)
ADMIN_USER = "admin"
ADMIN_PASSWORD = "bench-admin-password"


@dataclass
class Server:
    name: str
    url: str
    port: int
    data_dir: Path
    # process trees whose CPU a workload costs (Shipyard on PostgreSQL: Shipyard and PostgreSQL)
    cpu_roots: list[int]
    # process trees of the server itself, for its memory
    rss_roots: list[int]
    _stop: Callable[[], None]
    database_url: str | None = None
    log_path: Path | None = None
    info: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._stop()


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()}")


def stop_then_reap(root_pid: int, stop: Callable[[], None]) -> Callable[[], None]:
    """`stop`, then SIGKILL whatever of the tree under root_pid (as it was just before) outlived it."""

    def run() -> None:
        procs = snapshot()
        tree = [(pid, procs[pid].start_ticks) for pid in tree_pids(root_pid, procs)]
        try:
            stop()
        finally:
            kill_pids(tree)

    return run


def stop_postgres(server: PostgresServer) -> None:
    stop_then_reap(server.process.pid, server.stop)()


def port_is_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_shipyard(
    name: str,
    root: Path,
    *,
    database_url: str | None = None,
    workers: int | None = None,
    postgres: PostgresServer | None = None,
    auth: bool = False,
) -> Server:
    """Shipyard with --insecure-no-auth, or with `auth` as users run it (the admin's password is
    ADMIN_PASSWORD)."""
    env: dict[str, str] = {}
    if auth:
        env["SHIPYARD_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    if database_url:
        env["SHIPYARD_DATABASE_URL"] = database_url
    if workers:
        env["SHIPYARD_WORKERS"] = str(workers)
    data_dir = root / "data"
    process: ServerProcess = start_server(data_dir, extra_env=env, auth=auth)
    pid = process.process.pid
    cpu_roots = [pid] + ([postgres.process.pid] if postgres is not None else [])
    return Server(
        name=name,
        url=process.url,
        port=process.port,
        data_dir=data_dir,
        cpu_roots=cpu_roots,
        rss_roots=[pid],
        _stop=stop_then_reap(pid, process.stop),
        database_url=database_url or f"sqlite:///{data_dir / 'shipyard.db'}",
        log_path=process.log_path,
        info={"workers": str(workers or 1), "auth": "on" if auth else "off (--insecure-no-auth)"},
    )


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
catalog:
  maxentries: 100000
"""


def start_distribution(root: Path, binary: str = "docker-registry") -> Server:
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(binary)
    port = free_port()
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=data_dir, port=port))
    # Distribution reads every REGISTRY_* variable as an override of its configuration
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    log = root / "distribution.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [path, "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/v2/", process, log)
    except BaseException:
        stop_tree(process)
        raise
    return Server(
        name="distribution",
        url=url,
        port=port,
        data_dir=data_dir,
        cpu_roots=[process.pid],
        rss_roots=[process.pid],
        _stop=lambda: stop_tree(process),
        log_path=log,
    )


# nginx at its fastest here: tcp_nopush (TCP_CORK) off. With it on, a 1 GiB sendfile GET on loopback went
# at 1.6 GB/s and curl spent half as much CPU again receiving it; off, at 1.9-2.6 GB/s
NGINX_CONFIG = """\
daemon off;
master_process on;
user root;
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path {root}/tmp/client_body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}
}}
"""


def start_nginx(root: Path, www: Path, binary: str = "nginx") -> Server:
    path = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise FileNotFoundError(binary)
    port = free_port()
    (root / "tmp").mkdir(parents=True)
    config = root / "nginx.conf"
    config.write_text(textwrap.dedent(NGINX_CONFIG).format(root=root, port=port, www=www))
    log = root / "stderr.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [path, "-p", str(root), "-c", str(config), "-e", str(root / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/small.json", process, root / "error.log")
    except BaseException:
        stop_tree(process)
        raise
    return Server(
        name="nginx",
        url=url,
        port=port,
        data_dir=www,
        cpu_roots=[process.pid],
        rss_roots=[process.pid],
        # SIGTERM is nginx's fast shutdown; the group signal reaches master and workers alike
        _stop=lambda: stop_tree(process),
        log_path=root / "error.log",
    )


def stop_all(servers: list[Server]) -> list[str]:
    """Stop every server; return a complaint for each port still listening afterwards."""
    problems = []
    for server in servers:
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            problems.append(f"{server.name}: stop failed: {exc}")
    for server in servers:
        with contextlib.suppress(OSError):
            if port_is_listening(server.port):
                problems.append(f"{server.name}: port {server.port} still listening")
    return problems
