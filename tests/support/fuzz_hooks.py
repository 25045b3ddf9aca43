"""Schemathesis hooks for fuzzing the management API (loaded through SCHEMATHESIS_HOOKS).

The fuzzer authenticates as the registry's admin; nothing it generates may act on the account
`admin`, where it could give the admin a new secret and lock the rest of the run out."""

from __future__ import annotations

from typing import Any

import schemathesis

SUPERUSER_ACCOUNT = "admin"


@schemathesis.hook
def filter_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> bool:
    return not path_parameters or path_parameters.get("account") != SUPERUSER_ACCOUNT
