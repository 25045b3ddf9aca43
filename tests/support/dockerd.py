"""A private Docker daemon for tests: its own data root, exec root, socket and containerd, no networking.

    daemon = start_dockerd(Path(tempfile.mkdtemp(prefix="sy-dockerd-", dir="/tmp")))
    daemon.docker("push", "127.0.0.1:5000/repo:tag")
    daemon.stop()  # stops dockerd (and its containerd), unmounts and removes everything it created

Uses Debian's /usr/bin/docker and /usr/sbin/dockerd (20.10); `/usr/local/bin/docker` on these machines is
another client and comes first in PATH. dockerd starts with `--bridge none --iptables=false`, so it leaves
no `docker0` and no firewall rules behind; containers run with `--network none`. 127.0.0.0/8 is an
insecure registry for dockerd by default, so plain-HTTP pushes to 127.0.0.1:PORT work without config.
The base directory must be short: unix sockets (containerd's among them) are limited to 107 bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.cli import Credentials, mounts_under, run, unmount_under

DOCKER_CLIENT = "/usr/bin/docker"
STORAGE_DRIVERS = ("overlay2", "vfs")


def find_dockerd() -> str | None:
    return shutil.which("dockerd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


@dataclass
class DockerDaemon:
    base: Path
    process: subprocess.Popen[bytes]
    storage_driver: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket_path(self) -> Path:
        return self.base / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def docker(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run([DOCKER_CLIENT, "-H", self.host, *args], check=check, timeout=timeout, env=self.env)

    def client(self, config_dir: Path) -> DockerClient:
        """A docker client of this daemon with its own DOCKER_CONFIG (where `docker login` keeps creds)."""
        return DockerClient(self, config_dir)

    def stop(self) -> None:
        """SIGTERM dockerd (it stops its containers and its containerd), then unmount and delete its dirs."""
        if self.process.poll() is None:
            # remove leftovers first, so the shutdown does not wait for running containers
            leftovers = self._container_ids()
            if leftovers:
                self.docker("rm", "-f", "-v", *leftovers, check=False, timeout=60)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        _kill_pidfile(self.base / "exec" / "containerd" / "containerd.pid")
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)

    def _container_ids(self) -> list[str]:
        result = run([DOCKER_CLIENT, "-H", self.host, "ps", "-aq"], check=False, timeout=30, env=self.env)
        return result.stdout.split() if result.returncode == 0 else []

    def leftover_mounts(self) -> list[str]:
        return mounts_under(self.base)


@dataclass
class DockerClient:
    """/usr/bin/docker against one daemon, with a private config dir: logins stay in the test."""

    daemon: DockerDaemon
    config_dir: Path

    def __post_init__(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env["DOCKER_CONFIG"] = str(self.config_dir)

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [DOCKER_CLIENT, "-H", self.daemon.host, *args],
            check=check,
            timeout=timeout,
            env=self.env,
            input=input,
        )

    def login(
        self, address: str, creds: Credentials, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self(
            "login",
            "--username",
            creds.username,
            "--password-stdin",
            address,
            check=check,
            timeout=60,
            input=creds.password,
        )

    def logout(self, address: str) -> subprocess.CompletedProcess[str]:
        return self("logout", address, timeout=60)


def _kill_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _socket_answers(path: Path) -> bool:
    """True once the daemon answers GET /_ping on its unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(256)
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]
    except OSError:
        return False


def _start(base: Path, storage_driver: str, timeout: float) -> DockerDaemon:
    dockerd = find_dockerd()
    if dockerd is None:
        raise FileNotFoundError("dockerd")
    for sub in ("data", "exec", "home"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    config = base / "daemon.json"
    config.write_text(json.dumps({}))
    log_path = base / f"dockerd-{storage_driver}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(base / "home")
    cmd = [
        dockerd,
        "--data-root",
        str(base / "data"),
        "--exec-root",
        str(base / "exec"),
        "--pidfile",
        str(base / "dockerd.pid"),
        "--config-file",
        str(config),
        "-H",
        f"unix://{base / 'docker.sock'}",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--bridge",
        "none",
        "--storage-driver",
        storage_driver,
        "--log-level",
        "warn",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    daemon = DockerDaemon(base, process, storage_driver, log_path, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = daemon.log()
            daemon.stop()
            raise RuntimeError(f"dockerd ({storage_driver}) exited with {process.returncode}:\n{log_text}")
        if _socket_answers(daemon.socket_path):
            info = daemon.docker("info", "--format", "{{.Driver}}", check=False, timeout=30)
            if info.returncode == 0 and info.stdout.strip() == storage_driver:
                return daemon
        time.sleep(0.1)
    log_text = daemon.log()
    daemon.stop()
    raise RuntimeError(f"dockerd ({storage_driver}) did not answer within {timeout}s:\n{log_text}")


def start_dockerd(base: Path, *, timeout: float = 60.0) -> DockerDaemon:
    """Start dockerd on overlay2, or on vfs where overlay2 does not work here."""
    errors: list[str] = []
    for driver in STORAGE_DRIVERS:
        attempt = base / driver
        try:
            return _start(attempt, driver, timeout)
        except RuntimeError as exc:
            errors.append(str(exc))
            unmount_under(attempt)
            shutil.rmtree(attempt, ignore_errors=True)
    raise RuntimeError("dockerd could not start with any storage driver:\n" + "\n".join(errors))
