"""Schemathesis hooks for fuzzing the management API (loaded through SCHEMATHESIS_HOOKS).

The fuzzer authenticates as the registry's admin; nothing it generates may act on the account
`admin`, where it could give the admin a new secret and lock the rest of the run out."""

from __future__ import annotations

import re
from typing import Any

import schemathesis

SUPERUSER_ACCOUNT = "admin"


@schemathesis.hook
def filter_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> bool:
    return not path_parameters or path_parameters.get("account") != SUPERUSER_ACCOUNT


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    """A webhook URL that names a non-public address by itself (`http://10.0.0.1/`, `http://0/`) fits
    the schema and is refused by policy, with a 400 that says why: the schema cannot say so."""
    from shipyard.events.targets import URL_PATTERN, TargetRefused, check_at_creation

    url = body.get("url") if isinstance(body, dict) else None
    if isinstance(url, str) and len(url) <= 2048 and re.match(URL_PATTERN, url):
        try:
            check_at_creation(url, allow_private=False)
        except TargetRefused:
            return False
    return True
