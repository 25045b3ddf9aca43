"""Running real container clients (skopeo, podman, buildah) from tests, each isolated in a temp dir.

Every client gets its own auth file, registries.conf and storage (graphroot/runroot/tmpdir), so a test
never reads or changes the host's container state, and what it leaves is removed with its temp dir.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Credentials:
    """What a client logs in with: a user name (or access-key id, or `shipyard`) and its secret."""

    username: str
    password: str


class CommandFailed(AssertionError):
    def __init__(self, cmd: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.cmd = list(cmd)
        self.result = result
        super().__init__(
            f"command failed with exit code {result.returncode}: {shlex.join(self.cmd)}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )

    @property
    def stderr(self) -> str:
        return self.result.stderr


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capture its output; on a non-zero exit (with check) raise with both streams shown."""
    args = [os.fspath(a) for a in cmd]
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(
            f"command timed out after {timeout}s: {shlex.join(args)}\n--- stdout ---\n{out[-4000:]}\n"
            f"--- stderr ---\n{err[-4000:]}"
        ) from None
    if check and result.returncode != 0:
        raise CommandFailed(args, result)
    return result


def client_env(home: Path) -> dict[str, str]:
    """An environment for containers/image clients that reads nothing of the host's own client config."""
    home.mkdir(parents=True, exist_ok=True)
    auth = home / "auth.json"
    if not auth.exists():
        auth.write_text("{}")
    registries = home / "registries.conf"
    if not registries.exists():
        registries.write_text('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REGISTRY_", "CONTAINERS_", "DOCKER_", "BUILDAH_", "STORAGE_"))
    }
    env.update(
        {
            "REGISTRY_AUTH_FILE": str(auth),
            "CONTAINERS_REGISTRIES_CONF": str(registries),
            "DOCKER_CONFIG": str(home / "docker"),
            "XDG_RUNTIME_DIR": str(home / "xdg-run"),
            "TMPDIR": str(home / "tmp"),
        }
    )
    (home / "xdg-run").mkdir(exist_ok=True, mode=0o700)
    (home / "tmp").mkdir(exist_ok=True)
    return env


@dataclass
class Skopeo:
    binary: str
    home: Path

    def __post_init__(self) -> None:
        self.env = client_env(self.home)

    @property
    def authfile(self) -> Path:
        return Path(self.env["REGISTRY_AUTH_FILE"])

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run([self.binary, *args], check=check, timeout=timeout, env=self.env, input=input)

    def login(
        self, address: str, creds: Credentials, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`skopeo login` into this client's own auth file (the password on stdin); plain HTTP allowed
        unless `extra` says otherwise (a later --tls-verify wins)."""
        return self(
            "login",
            "--authfile",
            self.authfile,
            "--tls-verify=false",
            *extra,
            "--username",
            creds.username,
            "--password-stdin",
            address,
            check=check,
            timeout=60,
            input=creds.password,
        )

    def copy(
        self, src: str, dest: str, *extra: str, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """`skopeo copy` with plain HTTP allowed on both sides (TLS flags only apply to docker://)."""
        return self(
            "copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra, src, dest, timeout=timeout
        )

    def inspect_raw(self, ref: str, *extra: str) -> bytes:
        """The manifest bytes exactly as the source serves them (`skopeo inspect --raw`)."""
        result = subprocess.run(
            [self.binary, "inspect", "--raw", "--tls-verify=false", *extra, ref],
            capture_output=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise CommandFailed(
                ["skopeo", "inspect", "--raw", ref],
                subprocess.CompletedProcess(
                    result.args,
                    result.returncode,
                    result.stdout.decode(errors="replace"),
                    result.stderr.decode(errors="replace"),
                ),
            )
        return result.stdout

    def inspect(self, ref: str, *extra: str) -> dict[str, Any]:
        out = self("inspect", "--tls-verify=false", *extra, ref, timeout=60).stdout
        return json.loads(out)

    def list_tags(self, ref: str) -> list[str]:
        out = self("list-tags", "--tls-verify=false", ref, timeout=60).stdout
        return list(json.loads(out)["Tags"])


@dataclass
class ContainerStorage:
    """A private containers-storage (graphroot, runroot, libpod tmpdir) for podman and buildah."""

    base: Path
    driver: str = "vfs"

    def __post_init__(self) -> None:
        self.graphroot = self.base / "root"
        self.runroot = self.base / "runroot"
        self.tmpdir = self.base / "libpod-tmp"
        for d in (self.graphroot, self.runroot, self.tmpdir, self.base / "volumes", self.base / "networks"):
            d.mkdir(parents=True, exist_ok=True)
        self.env = client_env(self.base / "home")

    @property
    def storage_flags(self) -> list[str]:
        return [
            "--root",
            str(self.graphroot),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
        ]

    @property
    def skopeo_ref_prefix(self) -> str:
        """`containers-storage:` reference prefix naming this store, for skopeo."""
        return f"containers-storage:[{self.driver}@{self.graphroot}+{self.runroot}]"

    def podman_cmd(self, *args: str | os.PathLike[str]) -> list[str]:
        return [
            "podman",
            *self.storage_flags,
            "--tmpdir",
            str(self.tmpdir),
            "--volumepath",
            str(self.base / "volumes"),
            "--network-config-dir",
            str(self.base / "networks"),
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
            *(os.fspath(a) for a in args),
        ]

    def podman(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run(self.podman_cmd(*args), check=check, timeout=timeout, env=self.env)

    def buildah(
        self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run(["buildah", *self.storage_flags, *args], check=check, timeout=timeout, env=self.env)

    @property
    def authfile(self) -> Path:
        return Path(self.env["REGISTRY_AUTH_FILE"])

    def login(
        self, tool: str, address: str, creds: Credentials, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`podman login` or `buildah login` (`tool`) into this store's auth file, the password on stdin;
        plain HTTP allowed unless `extra` says otherwise (a later --tls-verify wins)."""
        prefix = self.podman_cmd() if tool == "podman" else ["buildah", *self.storage_flags]
        cmd = [
            *prefix,
            "login",
            "--authfile",
            str(self.authfile),
            "--tls-verify=false",
            *extra,
            "--username",
            creds.username,
            "--password-stdin",
            address,
        ]
        return run(cmd, check=check, timeout=60, env=self.env, input=creds.password)

    def cleanup(self) -> None:
        """Remove containers and images and any mount left under the store, then the directory itself."""
        if shutil.which("podman"):
            run(self.podman_cmd("rm", "--all", "--force"), check=False, timeout=60, env=self.env)
        if shutil.which("buildah"):
            run(["buildah", *self.storage_flags, "rm", "--all"], check=False, timeout=60, env=self.env)
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(path)
    points: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_under(path: Path) -> list[str]:
    """Lazily unmount everything at or below `path`; returns what was mounted there."""
    points = mounts_under(path)
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
    return points
