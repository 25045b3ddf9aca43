"""Docker token-auth scopes: `resourcetype:resourcename:action[,action...]`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

KNOWN_ACTIONS = frozenset({"pull", "push", "delete", "*"})


class ScopeInvalid(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope:
        # the name may itself hold a colon (a host:port prefix): type is before the first colon,
        # actions after the last
        first = text.find(":")
        last = text.rfind(":")
        if first <= 0 or last == first:
            raise ScopeInvalid(f"malformed scope: {text!r}")
        kind, name, actions = text[:first], text[first + 1 : last], text[last + 1 :]
        if not name:
            raise ScopeInvalid(f"malformed scope: {text!r}")
        parsed = frozenset(a for a in actions.split(",") if a)
        return cls(kind, name, parsed)

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}

    @classmethod
    def from_claim(cls, claim: Any) -> Scope:
        if not isinstance(claim, dict):
            raise ScopeInvalid("access entry must be an object")
        kind, name, actions = claim.get("type"), claim.get("name"), claim.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise ScopeInvalid("access entry needs type, name and actions")
        if not all(isinstance(a, str) for a in actions):
            raise ScopeInvalid("actions must be strings")
        return cls(kind, name, frozenset(actions))


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Parse `scope` parameters; one parameter may carry several scopes separated by spaces."""
    out: list[Scope] = []
    for value in values:
        for part in value.split():
            out.append(Scope.parse(part))
    return out


def merge(scopes: Iterable[Scope]) -> list[Scope]:
    """One entry per resource, actions united, in a stable order."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        merged.setdefault((scope.type, scope.name), set()).update(scope.actions)
    return [Scope(t, n, frozenset(a)) for (t, n), a in sorted(merged.items())]


def grants(access: Iterable[Scope], kind: str, name: str, action: str) -> bool:
    for scope in access:
        if scope.type == kind and scope.name == name and (action in scope.actions or "*" in scope.actions):
            return True
    return False
