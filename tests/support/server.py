"""Start a real `shipyard serve` process for a test and stop it again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    host: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def address(self) -> str:
        """host:port, the form container clients take (`docker://127.0.0.1:5000/repo:tag`)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (server and its workers): a crash, not a shutdown."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            # the main process ended; make sure no worker outlived it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def start_server(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    timeout: float = 60.0,
    auth: bool = False,
    cafile: Path | None = None,
) -> ServerProcess:
    """Start `shipyard serve`. Without `auth`, it runs with --insecure-no-auth (protocol and fault tests);
    with it, as users run it (pass SHIPYARD_ADMIN_PASSWORD in `extra_env` to know the admin's password).

    With `cafile` the server serves HTTPS (pass --tls-cert/--tls-key in `extra_args`): the readiness probe
    then asks https://HOST:PORT/v2/ and verifies the server's certificate against `cafile`."""
    scheme = "https" if cafile is not None else "http"
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    if not auth:
        env["SHIPYARD_INSECURE_NO_AUTH"] = "true"
    env.update(extra_env or {})
    log_path = data_dir.parent / f"server-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "shipyard",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        *(extra_args or []),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = ServerProcess(host, port, data_dir, process, log_path, env, scheme)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"shipyard serve exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/", timeout=2, context=context) as response:
                if response.status == 200:
                    return server
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 401:  # authentication is on: the server is up
                return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"shipyard serve did not answer within {timeout}s:\n{server.log()}")
