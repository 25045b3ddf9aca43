"""`shipyard jobs list|show|retry|cancel`: the background job queue, over /api/v1/jobs of a running
registry (registry administrators only)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shipyard.cli.manage import ApiError, _positive, add_connection, add_limit, open_client, table

STATES = ("queued", "running", "done", "failed", "dead", "cancelled")
LIST_COLUMNS = ("id", "kind", "state", "attempts", "run_at", "last_error")
SHOW_FIELDS = (
    "id",
    "kind",
    "state",
    "attempts",
    "max_attempts",
    "run_at",
    "lease_owner",
    "lease_expires_at",
    "unique_key",
    "created_at",
    "updated_at",
    "finished_at",
    "payload",
    "last_error",
)
DEFAULT_LIMIT = 50


def _row(job: dict[str, Any]) -> dict[str, Any]:
    attempts = f"{job['attempts']}/{job['max_attempts']}"
    error = (job.get("last_error") or "").splitlines()
    return {**job, "attempts": attempts, "last_error": error[0][:80] if error else ""}


def _details(job: dict[str, Any]) -> str:
    width = max(len(name) for name in SHOW_FIELDS)
    lines = []
    for name in SHOW_FIELDS:
        value = job.get(name)
        if name == "payload":
            value = json.dumps(value, sort_keys=True)
        lines.append(f"{name.ljust(width)}  {'' if value is None else value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        client = open_client(args)
        if client is None:
            return 2
        if args.action == "list":
            query = {k: v for k, v in (("state", args.state), ("kind", args.kind)) if v}
            document = client.listing("/api/v1/jobs", "jobs", args.limit, query)
        elif args.action == "show":
            document = client.call("GET", f"/api/v1/jobs/{args.id}")
        else:
            document = client.call("POST", f"/api/v1/jobs/{args.id}/{args.action}")
    except ApiError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(document, indent=2))
    elif args.action == "list":
        print(table([_row(job) for job in document["jobs"]], LIST_COLUMNS))
    else:
        print(_details(document))
    return 0


def register(sub: Any) -> None:
    text = "see and act on background jobs (registry administrators)"
    group = sub.add_parser(
        "jobs", help=text, description=f"{text}. The password comes from SHIPYARD_PASSWORD, else a prompt."
    ).add_subparsers(dest="action", required=True)

    def connection(p: argparse.ArgumentParser) -> None:
        add_connection(p, run)

    p = group.add_parser("list", help="list jobs, newest first")
    p.add_argument("--state", choices=STATES, help="only jobs in this state")
    p.add_argument("--kind", help="only jobs of this kind")
    add_limit(p, DEFAULT_LIMIT, "jobs")
    connection(p)
    for action, help_text in (
        ("show", "show a job, with its payload and last error"),
        ("retry", "run a dead, failed or cancelled job again"),
        ("cancel", "cancel a queued job, or a failed one waiting to run again"),
    ):
        p = group.add_parser(action, help=help_text)
        p.add_argument("id", type=_positive, help="the job's id")
        connection(p)
