"""Finding the real tools a test needs: in CI a missing tool fails the test, elsewhere it skips."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(*names: str) -> dict[str, str]:
    """Return {name: path} for every tool, or fail (CI) / skip (elsewhere) naming what is missing."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        reason = f"missing tool(s): {', '.join(missing)}"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        reason = "needs root (network namespaces, dockerd, container storage)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
