"""`shipyard worker` refuses what it cannot run, in one line, before it leases anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.cli.main import main


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SHIPYARD_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("nokind", "--extra-handler takes KIND=MODULE:FUNCTION, not 'nokind'"),
        ("x=nomodule", "--extra-handler takes KIND=MODULE:FUNCTION, not 'x=nomodule'"),
        ("x=tests.support.nosuch:run", "--extra-handler x=tests.support.nosuch:run: No module named"),
        ("x=tests.support.job_handlers:nosuch", "has no attribute 'nosuch'"),
        ("x=tests.support.job_handlers:Path", None),  # a class is callable: accepted
    ],
)
def test_a_bad_extra_handler_is_a_configuration_error(
    option: str, message: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["worker", "--data-dir", str(tmp_path), "--extra-handler", option])
    err = capsys.readouterr().err
    if message is None:
        # it got as far as the database, which nobody has migrated
        assert code == 1 and "run `shipyard migrate`" in err, err
    else:
        assert code == 2 and message in err, err


def test_a_database_behind_the_migrations_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "shipyard: the database schema is behind: run `shipyard migrate` (or `shipyard serve`) first\n"
    )
