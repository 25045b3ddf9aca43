"""The README is executable: every ```sh block of README.md runs, as written and in order, against a real
`shipyard serve` with authentication on.

The README speaks of 127.0.0.1:5000; the test serves on a free port and rewrites that address in each
block to it (nothing else of a block changes). Blocks run with bash in a temporary working directory,
each in a shell of its own that starts with the variables the blocks before it exported, with
`set -eo pipefail`: a failing command fails the test, naming the block. A block whose first line is
`# readme-test: skip (reason)` is not run; ```toml and other blocks are not commands.

What the README assumes exists, the test prepares: the admin password in SHIPYARD_ADMIN_PASSWORD, an
OCI layout ./layout (one image, tag latest) and a multi-platform ./multi, the local image app:1.0 in a
private podman/buildah store (CONTAINERS_STORAGE_CONF) and in a private Docker daemon, and client
configuration of its own (auth file, registries.conf, DOCKER_CONFIG), so that nothing of the machine's
own is read or written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.cli import client_env, run
from tests.support.dockerd import DOCKER_CLIENT, DockerDaemon, start_dockerd
from tests.support.oci_layout import build_multiplatform_index, build_small_image
from tests.support.server import ServerProcess, free_port, start_server
from tests.support.tools import require_root, require_tool

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = "127.0.0.1:5000"
ADMIN_PASSWORD = "readme-admin-password"
SKIP = re.compile(r"^# readme-test: skip \((?P<reason>[^)]+)\)$")
_BLOCK = re.compile(r"^```(?P<lang>\S*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    line: int  # where the block starts in README.md, for messages
    body: str

    @property
    def skip_reason(self) -> str | None:
        match = SKIP.match(self.body.split("\n", 1)[0])
        return match["reason"] if match else None


def shell_blocks(text: str) -> list[Block]:
    return [
        Block(text.count("\n", 0, match.start()) + 1, match["body"])
        for match in _BLOCK.finditer(text)
        if match["lang"] == "sh"
    ]


def test_the_block_parser_finds_sh_blocks_only() -> None:
    text = "a\n```sh\necho one\n```\n\n```toml\nport = 1\n```\n```sh\n# readme-test: skip (why)\nx\n```\n"
    blocks = shell_blocks(text)
    assert [(b.line, b.body, b.skip_reason) for b in blocks] == [
        (2, "echo one\n", None),
        (9, "# readme-test: skip (why)\nx\n", "why"),
    ]


def test_the_readme_skips_sparingly() -> None:
    """Only what cannot run against the test's server is skipped, each with a reason."""
    blocks = shell_blocks(README.read_text())
    reasons = [b.skip_reason for b in blocks if b.skip_reason is not None]
    assert len(blocks) >= 6 and len(reasons) <= 2, reasons
    for block in blocks:
        assert "readme-test" not in block.body or block.skip_reason is not None, block


@pytest.fixture
def docker_daemon() -> Iterator[DockerDaemon]:
    require_root()
    require_tool("dockerd", DOCKER_CLIENT)
    base = Path(tempfile.mkdtemp(prefix="sy-readme-", dir="/tmp"))  # short: unix socket paths are limited
    try:
        daemon = start_dockerd(base)
        yield daemon
        daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _environment(home: Path, daemon: DockerDaemon) -> dict[str, str]:
    env = {k: v for k, v in client_env(home).items() if not k.startswith("SHIPYARD_")}
    storage = home / "storage"
    conf = home / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{storage / "graph"}"\nrunroot = "{storage / "run"}"\n'
    )
    # `docker` is Debian's client (another one comes first in PATH here); `shipyard` is this checkout's
    shims = home / "bin"
    shims.mkdir()
    (shims / "docker").symlink_to(DOCKER_CLIENT)
    path = os.pathsep.join([str(shims), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(
        {
            "HOME": str(home),
            "PATH": path,
            "CONTAINERS_STORAGE_CONF": str(conf),
            "DOCKER_HOST": daemon.host,
            "SHIPYARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
    )
    return env


def _prepare(work: Path, env: dict[str, str]) -> None:
    """The README's ./layout, ./multi and local app:1.0 (podman/buildah store and Docker daemon)."""
    build_small_image(work / "layout", seed="readme-layout")
    build_multiplatform_index(work / "multi", seed="readme-multi")
    run(["skopeo", "copy", "oci:./layout:latest", "containers-storage:localhost/app:1.0"], env=env, cwd=work)
    archive = work.parent / "app.tar"
    run(["skopeo", "copy", "oci:./layout:latest", f"docker-archive:{archive}:app:1.0"], env=env, cwd=work)
    run([DOCKER_CLIENT, "load", "-i", archive], env=env)


def _run_block(block: Block, port: int, work: Path, state: Path, env: dict[str, str]) -> str:
    script = "\n".join(
        [
            "set -eo pipefail",
            f"if [ -f {shlex.quote(str(state))} ]; then source {shlex.quote(str(state))}; fi",
            block.body.replace(ADDRESS, f"127.0.0.1:{port}"),
            f"export -p > {shlex.quote(str(state))}",
        ]
    )
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"README.md block at line {block.line} failed ({result.returncode}):\n{block.body}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def test_every_readme_command_runs_as_written(tmp_path: Path, docker_daemon: DockerDaemon) -> None:
    require_tool("skopeo", "podman", "buildah")
    port = free_port()
    server = start_server(
        tmp_path / "data", port=port, auth=True, extra_env={"SHIPYARD_ADMIN_PASSWORD": ADMIN_PASSWORD}
    )
    try:
        work = tmp_path / "work"
        work.mkdir()
        env = _environment(tmp_path / "home", docker_daemon)
        _prepare(work, env)
        state = tmp_path / "exported.sh"
        ran = 0
        for block in shell_blocks(README.read_text()):
            if block.skip_reason is None:
                _run_block(block, port, work, state, env)
                ran += 1
        assert ran >= 6
        _assert_the_walkthrough_left(server, work)
    finally:
        server.stop()
        # podman's vfs layers and the pulled images are large: do not keep them among pytest's temp dirs
        shutil.rmtree(tmp_path / "home" / "storage", ignore_errors=True)


def _assert_the_walkthrough_left(server: ServerProcess, work: Path) -> None:
    """What the commands did, seen from the registry."""
    assert (work / "pulled" / "index.json").is_file()
    assert (work / "certs" / "server.crt").is_file()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        scope = "repository:team/app:pull"
        r = client.get(
            "/token", params={"service": "shipyard", "scope": scope}, auth=("admin", ADMIN_PASSWORD)
        )
        assert r.status_code == 200, r.text
        headers = {"authorization": f"Bearer {r.json()['token']}"}
        tags = client.get("/v2/team/app/tags/list", headers=headers).json()["tags"]
        assert {"1.0", "multi", "list"} <= set(tags), tags
        # acme/web was created empty and made public: an anonymous token lists it
        r = client.get("/token", params={"service": "shipyard", "scope": "repository:acme/web:pull"})
        r = client.get("/v2/acme/web/tags/list", headers={"authorization": f"Bearer {r.json()['token']}"})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "acme/web"
