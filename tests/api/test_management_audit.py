"""The audit log of the management API: every change, allowed, denied or failed, is an event saying who,
what, from where and why, with no secret in it; GET /api/v1/audit shows an account's admins their
account's events and registry administrators everyone's. In-process, authentication on, both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shipyard.domain.management import AuditRecord
from tests.auth.conftest import PASSWORD, AuthRegistry, make_auth_registry
from tests.conftest import DATABASES

ROOT = ("admin", "pw")
WRITER = ("alpha-writer", PASSWORD)
READER = ("alpha-reader", PASSWORD)
BETA = ("beta-writer", PASSWORD)
SOURCE = "203.0.113.7"


@pytest.fixture(scope="module", params=DATABASES)
def registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthRegistry]:
    data_dir = tmp_path_factory.mktemp(f"audit-{request.param}")
    yield from make_auth_registry(request, data_dir, request.param)


@pytest.fixture(scope="module")
def api(registry: AuthRegistry) -> httpx.Client:
    """A client whose requests come from SOURCE."""
    return registry.client_from(SOURCE)


@pytest.fixture(scope="module")
def boss(api: httpx.Client) -> tuple[str, str]:
    """An admin of the account alpha."""
    r = api.post("/api/v1/accounts/alpha/users", auth=ROOT, json={"name": "alpha-boss", "role": "admin"})
    assert r.status_code == 201, r.text
    return "alpha-boss", r.json()["secret"]


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def newest_id(registry: AuthRegistry) -> int:
    events = registry.identity.accounts.audit_page(1, None)
    return events[0].id if events else 0


def events_after(registry: AuthRegistry, marker: int) -> list[AuditRecord]:
    """Events written after `marker` (an event id), oldest first."""
    return sorted(
        (e for e in registry.identity.accounts.audit_page(1000, None) if e.id > marker), key=lambda e: e.id
    )


def only_event(registry: AuthRegistry, marker: int) -> AuditRecord:
    events = [e for e in events_after(registry, marker) if e.event == "management"]
    assert len(events) == 1, events
    return events[0]


def test_every_allowed_change_is_an_event_with_who_what_where_and_no_secret(
    registry: AuthRegistry, api: httpx.Client, boss: tuple[str, str]
) -> None:
    secrets: list[str] = [boss[1], "pw", PASSWORD]
    steps: list[tuple[str, str]] = []

    def step(
        action: str,
        creds: tuple[str, str],
        where: tuple[str | None, str | None],
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        status: int = 200,
    ) -> Any:
        """Make the request; exactly one event, saying who did `action` to `where` from SOURCE."""
        marker = newest_id(registry)
        document = ok(api.request(method, path, auth=creds, json=body), status)
        event = only_event(registry, marker)
        assert (event.action, event.principal, event.source, event.outcome) == (
            action,
            creds[0],
            SOURCE,
            "allowed",
        ), event
        assert (event.account, event.target) == where, event
        steps.append((action, event.reason))
        if isinstance(document, dict) and document.get("secret"):
            secrets.append(document["secret"])
        return document

    audited = ("audited", "audited")
    step("account.create", ROOT, audited, "POST", "/api/v1/accounts", {"name": "audited"}, 201)
    step("account.disable", ROOT, audited, "PATCH", "/api/v1/accounts/audited", {"disabled": True})
    step("account.enable", ROOT, audited, "PATCH", "/api/v1/accounts/audited", {"disabled": False})
    step("account.delete", ROOT, audited, "DELETE", "/api/v1/accounts/audited", status=204)

    users = "/api/v1/accounts/alpha/users"
    chosen = "a-chosen-password-1"
    secrets.append(chosen)
    carol, dave = ("alpha", "carol"), ("alpha", "dave")
    step(
        "user.create",
        boss,
        carol,
        "POST",
        users,
        {"name": "carol", "role": "writer", "password": chosen},
        201,
    )
    step("user.create", boss, dave, "POST", users, {"name": "dave"}, 201)
    step("user.role", boss, dave, "PATCH", f"{users}/dave", {"role": "writer"})
    step("user.disable", boss, dave, "PATCH", f"{users}/dave", {"disabled": True})
    step("user.enable", boss, dave, "PATCH", f"{users}/dave", {"disabled": False})
    renewed = step("user.reset-secret", boss, dave, "PATCH", f"{users}/dave", {"reset_secret": True})
    dave_creds = ("dave", renewed["secret"])

    keys = "/api/v1/accounts/alpha/access-keys"
    marker = newest_id(registry)
    key = ok(api.post(keys, auth=dave_creds, json={"description": "laptop"}), 201)
    secrets.append(key["secret"])
    event = only_event(registry, marker)
    assert (event.action, event.principal, event.source, event.account, event.target, event.outcome) == (
        "access-key.create",
        "dave",
        SOURCE,
        "alpha",
        key["login"],
        "allowed",
    )
    revoke = "/api/v1/accounts/alpha/principals/dave/revoke"
    step("principal.revoke", dave_creds, dave, "POST", revoke)
    step(
        "access-key.delete",
        dave_creds,
        ("alpha", key["login"]),
        "DELETE",
        f"{keys}/{key['login']}",
        status=204,
    )

    robots = "/api/v1/accounts/alpha/robots"
    bot = ("alpha", "alpha+bot")
    step("robot.create", boss, bot, "POST", robots, {"name": "bot", "role": "writer"}, 201)
    step("robot.role", boss, bot, "PATCH", f"{robots}/bot", {"role": "reader"})
    step("robot.reset-secret", boss, bot, "PATCH", f"{robots}/bot", {"reset_secret": True})
    step("robot.delete", boss, bot, "DELETE", f"{robots}/bot", status=204)

    repo = "/api/v1/repositories/alpha/audited"
    audited_repo = ("alpha", "alpha/audited")
    create = "/api/v1/accounts/alpha/repositories"
    step("repository.create", boss, audited_repo, "POST", create, {"name": "audited"}, 201)
    step("repository.visibility", boss, audited_repo, "PATCH", repo, {"visibility": "public"})
    step("policy.grant", boss, audited_repo, "PUT", f"{repo}/policies/beta", {"actions": ["pull", "push"]})
    step("policy.revoke", boss, audited_repo, "DELETE", f"{repo}/policies/beta", status=204)
    step("repository.delete", boss, audited_repo, "DELETE", repo, status=204)
    step("user.delete", boss, carol, "DELETE", f"{users}/carol", status=204)

    reasons = dict(steps)
    assert reasons["user.role"] == "role reader -> writer"
    assert reasons["robot.role"] == "role writer -> reader"
    assert reasons["policy.grant"] == "beta: pull,push"
    assert reasons["repository.visibility"] == "public"
    assert reasons["principal.revoke"].startswith("token generation ")

    # no secret went anywhere into the log
    every = json.dumps([repr(e) for e in registry.identity.accounts.audit_page(1000, None)])
    for secret in secrets:
        assert secret not in every


def test_denied_and_failed_attempts_are_events_with_the_reason(
    registry: AuthRegistry, api: httpx.Client, boss: tuple[str, str]
) -> None:
    marker = newest_id(registry)
    r = api.post(
        "/api/v1/accounts/alpha/users", auth=WRITER, json={"name": "sneaky", "password": "sneaky-pw-1"}
    )
    assert r.status_code == 403
    event = only_event(registry, marker)
    assert (event.action, event.principal, event.source, event.account, event.target, event.outcome) == (
        "user.create",
        "alpha-writer",
        SOURCE,
        "alpha",
        "sneaky",
        "denied",
    )
    assert event.reason.startswith("only admins of alpha may do this")
    assert "sneaky-pw-1" not in repr(event)

    # an outsider is told "no such account"; the event says what happened, on the account it targeted
    marker = newest_id(registry)
    r = api.post("/api/v1/accounts/alpha/repositories", auth=BETA, json={"name": "intrusion"})
    assert r.status_code == 404 and "no account alpha" in r.text
    event = only_event(registry, marker)
    assert (event.action, event.principal, event.account, event.target, event.outcome, event.reason) == (
        "repository.create",
        "beta-writer",
        "alpha",
        "alpha/intrusion",
        "denied",
        "beta-writer is not a member of alpha (visibility private)",
    )

    marker = newest_id(registry)
    assert api.post("/api/v1/accounts", auth=BETA, json={"name": "mine"}).status_code == 403
    event = only_event(registry, marker)
    assert (event.action, event.outcome, event.reason) == (
        "account.create",
        "denied",
        "only registry administrators may do this",
    )

    marker = newest_id(registry)
    r = api.patch("/api/v1/accounts/alpha/users/alpha-boss", auth=boss, json={"disabled": True})
    assert r.status_code == 403
    event = only_event(registry, marker)
    assert (event.action, event.outcome, event.reason) == (
        "user.disable",
        "denied",
        "you cannot disable or demote yourself",
    )

    # refused for another reason than authorization: "failed"
    marker = newest_id(registry)
    assert api.post("/api/v1/accounts", auth=ROOT, json={"name": "alpha"}).status_code == 409
    event = only_event(registry, marker)
    assert (event.action, event.outcome, event.reason) == (
        "account.create",
        "failed",
        "account exists: alpha",
    )
    marker = newest_id(registry)
    r = api.post("/api/v1/accounts/alpha/users", auth=boss, json={"name": "short", "password": "tiny"})
    assert r.status_code == 400
    event = only_event(registry, marker)
    assert (event.outcome, event.reason) == ("failed", "passwords have at least 8 characters (role reader)")
    assert "tiny" not in repr(event)


def test_reads_are_not_audited(registry: AuthRegistry, api: httpx.Client, boss: tuple[str, str]) -> None:
    marker = newest_id(registry)
    ok(api.get("/api/v1/accounts/alpha/users", auth=boss))
    ok(api.get("/api/v1/audit", auth=boss))
    assert [e for e in events_after(registry, marker) if e.event == "management"] == []


def test_admins_read_their_accounts_events_and_superusers_everyones(
    registry: AuthRegistry, api: httpx.Client, boss: tuple[str, str]
) -> None:
    ok(api.post("/api/v1/accounts/beta/users", auth=ROOT, json={"name": "beta-boss", "role": "admin"}), 201)
    ok(api.post("/api/v1/accounts/alpha/repositories", auth=boss, json={"name": "alpha-only"}), 201)
    assert api.get("/api/v1/whoami", auth=("alpha-writer", "wrong")).status_code == 401  # login-failed

    alpha = ok(api.get("/api/v1/audit", params={"n": 1000}, auth=boss))["events"]
    assert alpha and {e["account"] for e in alpha} == {"alpha"}
    assert alpha[0]["action"] == "repository.create" and alpha[0]["target"] == "alpha/alpha-only"
    assert alpha[0]["source"] == SOURCE and alpha[0]["principal"] == "alpha-boss"
    assert [e["id"] for e in alpha] == sorted((e["id"] for e in alpha), reverse=True)  # newest first
    assert set(alpha[0]) == {
        "id", "at", "event", "principal", "source", "action", "account", "target", "outcome", "reason"
    }  # fmt: skip

    # an admin of alpha cannot read beta's events: as if beta did not exist
    r = api.get("/api/v1/audit", params={"account": "beta"}, auth=boss)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"
    # members that are not admins read nothing
    r = api.get("/api/v1/audit", auth=WRITER)
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
    assert api.get("/api/v1/audit", auth=READER).status_code == 403
    assert api.get("/api/v1/audit").status_code == 401

    everyone = ok(api.get("/api/v1/audit", params={"n": 1000}, auth=ROOT))["events"]
    accounts = {e["account"] for e in everyone}
    assert {"alpha", "beta"} <= accounts
    assert None in accounts  # the failed logins and other refused registry requests, too
    beta = ok(api.get("/api/v1/audit", params={"account": "beta", "n": 1000}, auth=ROOT))["events"]
    assert beta and {e["account"] for e in beta} == {"beta"}
    assert {e["target"] for e in beta} >= {"beta-boss"}


def test_the_audit_listing_is_paged_newest_first(
    registry: AuthRegistry, api: httpx.Client, boss: tuple[str, str]
) -> None:
    for name in ("page-a", "page-b", "page-c"):
        ok(api.post("/api/v1/accounts/alpha/repositories", auth=boss, json={"name": name}), 201)
    r = api.get("/api/v1/audit", params={"n": 2}, auth=boss)
    first = ok(r)["events"]
    assert [e["target"] for e in first] == ["alpha/page-c", "alpha/page-b"]
    link = r.headers["link"]
    assert link == f'</api/v1/audit?n=2&last={first[-1]["id"]}>; rel="next"'
    r = api.get(link.split(";")[0].strip("<>"), auth=boss)
    assert ok(r)["events"][0]["target"] == "alpha/page-a"

    # the account filter survives in the Link header
    r = api.get("/api/v1/audit", params={"account": "alpha", "n": 1}, auth=ROOT)
    assert ok(r)["events"][0]["target"] == "alpha/page-c"
    assert r.headers["link"].startswith("</api/v1/audit?account=alpha&n=1&last=")

    # after the oldest event, nothing, and no Link
    r = api.get("/api/v1/audit", params={"last": 1}, auth=ROOT)
    assert ok(r) == {"events": []} and "link" not in r.headers
    r = api.get("/api/v1/audit", params={"last": "yesterday"}, auth=ROOT)
    assert r.status_code == 400 and "last must be an event id" in r.text
