"""Running the management commands (`shipyard accounts|users|...|audit`) in-process against a real
`shipyard serve`, with the password passed as the CLI takes it (SHIPYARD_PASSWORD)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shipyard.cli.main import main
from tests.support.server import ServerProcess, start_server


def serve_with_auth(
    tmp_path_factory: pytest.TempPathFactory, name: str, admin_password: str
) -> Iterator[ServerProcess]:
    """A `shipyard serve` with authentication on and a known admin password, for a fixture."""
    data_dir = tmp_path_factory.mktemp(name) / "data"
    process = start_server(data_dir, auth=True, extra_env={"SHIPYARD_ADMIN_PASSWORD": admin_password})
    yield process
    process.stop()


class ManageCli:
    def __init__(
        self,
        server: ServerProcess,
        capsys: pytest.CaptureFixture[str],
        mp: pytest.MonkeyPatch,
        admin_password: str,
    ) -> None:
        self.server = server
        self.capsys = capsys
        self.mp = mp
        self.admin_password = admin_password

    def run(self, *argv: str, user: str = "admin", password: str | None = None) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of `shipyard ARGV --registry URL -u USER`."""
        self.mp.setenv("SHIPYARD_PASSWORD", self.admin_password if password is None else password)
        self.capsys.readouterr()
        code = main([*argv, "--registry", self.server.url, "-u", user])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str, user: str = "admin", password: str | None = None) -> Any:
        code, out, err = self.run(*argv, "--json", user=user, password=password)
        assert code == 0, err
        return json.loads(out)
