"""Readiness: named checks of what the registry needs (database, blob store, schema), run on demand."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# a check returns normally when its dependency is usable and raises (anything) when it is not
Check = Callable[[], object]


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    checks: dict[str, str]

    def document(self) -> dict[str, object]:
        return {"status": "ok" if self.ready else "unavailable", "checks": self.checks}


class ReadinessService:
    def __init__(self, checks: Mapping[str, Check]) -> None:
        self._checks = dict(checks)

    def check(self) -> Readiness:
        results: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                check()
            except Exception as exc:
                # the reason goes to the log only: a balancer's probe is unauthenticated, and a driver's
                # message may name hosts, paths or users
                log.warning("readiness check %s failed: %s", name, exc)
                results[name] = "failed"
            else:
                results[name] = "ok"
        return Readiness(all(r == "ok" for r in results.values()), results)
