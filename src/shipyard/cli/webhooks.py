"""`shipyard webhooks` and `shipyard events`: clients of the management API's events and webhooks,
in the style of the other management commands (cli/manage.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shipyard.cli.manage import ApiError, Client, _positive, _q, add_connection, add_limit, open_client, table

EVENT_LIMIT = 100
WEBHOOK_COLUMNS = ("id", "url", "events", "repositories", "description", "created_at")
DELIVERY_COLUMNS = ("id", "event_id", "event_type", "state", "attempts", "last_status", "next_attempt_at")
EVENT_COLUMNS = ("id", "at", "type", "repository", "tag", "digest")


def _webhooks(a: argparse.Namespace) -> str:
    return f"/api/v1/accounts/{_q(a.account)}/webhooks"


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _create(c: Client, a: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"url": a.url, "events": _split(a.events), "repositories": a.repository or []}
    if a.description:
        body["description"] = a.description
    return c.call("POST", _webhooks(a), body)


def _events(c: Client, a: argparse.Namespace) -> Any:
    query = {k: v for k, v in (("account", a.account), ("repository", a.repository), ("type", a.type)) if v}
    return c.listing("/api/v1/events", "events", a.limit, query)


COMMANDS = {
    ("webhooks", "create"): _create,
    ("webhooks", "list"): lambda c, a: c.listing(_webhooks(a), "webhooks", a.limit),
    ("webhooks", "delete"): lambda c, a: c.call("DELETE", f"{_webhooks(a)}/{a.id}"),
    ("webhooks", "deliveries"): lambda c, a: c.listing(
        f"{_webhooks(a)}/{a.id}/deliveries", "deliveries", a.limit
    ),
    ("webhooks", "redeliver"): lambda c, a: c.call(
        "POST", f"{_webhooks(a)}/{a.id}/deliveries/{a.delivery}/redeliver"
    ),
    ("events", "list"): _events,
}


def _print(a: argparse.Namespace, document: Any) -> None:
    if a.json:
        print(json.dumps(document, indent=2))
        return
    if document is None:
        print("done")
        return
    key = (a.command, a.action)
    if key == ("events", "list"):
        print(table(document["events"], EVENT_COLUMNS))
    elif key == ("webhooks", "deliveries"):
        print(table(document["deliveries"], DELIVERY_COLUMNS))
        for delivery in document["deliveries"]:
            for attempt in delivery["log"]:
                outcome = attempt["status"] if attempt["status"] is not None else attempt["error"]
                print(f"  {delivery['id']}: {attempt['at']} {outcome} {attempt['duration_ms']} ms")
    elif key == ("webhooks", "redeliver"):
        print(table([document], DELIVERY_COLUMNS))
    elif key == ("webhooks", "list"):
        print(table(document["webhooks"], WEBHOOK_COLUMNS))
    else:
        print(table([document], WEBHOOK_COLUMNS))
        if document.get("secret"):
            print(
                f"\nsigning secret of webhook {document['id']}:\n    {document['secret']}\n"
                "WARNING: store it now; it will not be shown again."
            )


def run(args: argparse.Namespace) -> int:
    try:
        client = open_client(args)
        if client is None:
            return 2
        document = COMMANDS[args.command, args.action](client, args)
    except ApiError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return 1
    _print(args, document)
    return 0


def register(sub: Any) -> None:
    """Add `webhooks` and `events` to the top-level subparsers of `shipyard`."""

    def connection(p: argparse.ArgumentParser) -> None:
        add_connection(p, run)

    def listing(p: argparse.ArgumentParser, default: int | None = None) -> None:
        add_limit(p, default)
        connection(p)

    def group(name: str, text: str) -> Any:
        parser = sub.add_parser(
            name, help=text, description=f"{text}. The password comes from SHIPYARD_PASSWORD, else a prompt."
        )
        return parser.add_subparsers(dest="action", required=True)

    hooks = group("webhooks", "manage an account's webhooks (account admins)")
    p = hooks.add_parser("create", help="subscribe a URL to events; prints its signing secret once")
    p.add_argument("account")
    p.add_argument("url")
    p.add_argument("--events", metavar="TYPES", help="comma-separated event types (default: every type)")
    p.add_argument(
        "--repository",
        action="append",
        metavar="PATTERN",
        help="only repositories matching this glob within the account, e.g. 'web/*' (repeatable)",
    )
    p.add_argument("--description")
    connection(p)
    p = hooks.add_parser("list", help="list an account's webhooks")
    p.add_argument("account")
    listing(p)
    p = hooks.add_parser("delete", help="delete a webhook")
    p.add_argument("account")
    p.add_argument("id", type=_positive)
    connection(p)
    p = hooks.add_parser("deliveries", help="list a webhook's deliveries and their attempts, newest first")
    p.add_argument("account")
    p.add_argument("id", type=_positive)
    listing(p, EVENT_LIMIT)
    p = hooks.add_parser("redeliver", help="queue a new attempt of a delivery now")
    p.add_argument("account")
    p.add_argument("id", type=_positive)
    p.add_argument("delivery", type=_positive)
    connection(p)

    events = group("events", "read events (account admins: their account's; registry administrators: all)")
    p = events.add_parser("list", help="list events, newest first")
    p.add_argument("--account", help="only this account's events")
    p.add_argument("--repository", help="only this repository's events")
    p.add_argument("--type", help="only events of this type, e.g. manifest.pushed")
    listing(p, EVENT_LIMIT)
