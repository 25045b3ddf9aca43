"""Management commands (accounts, users, robots, access-keys, repos, audit, whoami): clients of the
REST API under /api/v1/ of a running registry. Listings follow the API's pages (its `Link` headers)
until they have printed everything, or `--limit` items."""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from shipyard import __version__

Command = Callable[["Client", argparse.Namespace], Any]

# the API records what this client does as coming from cli@<address>
USER_AGENT = f"shipyard-cli/{__version__}"
PAGE_SIZE = 1000  # the API's largest page
AUDIT_LIMIT = 100


class ApiError(Exception):
    """A failed call, as one line for a person: the server's detail, or why it could not be asked."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message}, HTTP {status}" if status else message)
        self.status = status


class Client:
    def __init__(self, registry: str, user: str, password: str, cacert: Path | None) -> None:
        self.base = registry.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {
            "authorization": f"Basic {token}",
            "accept": "application/json",
            "user-agent": USER_AGENT,
        }
        self.context = ssl.create_default_context(cafile=str(cacert)) if cacert else None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request(method, path, body)[0]

    def listing(
        self, path: str, key: str, limit: int | None = None, query: dict[str, str] | None = None
    ) -> dict[str, list[Any]]:
        """Every item of a paged listing (at most `limit`), following the `Link: rel="next"` headers."""
        size = PAGE_SIZE if limit is None else max(1, min(limit, PAGE_SIZE))
        url: str | None = f"{path}?{urlencode({**(query or {}), 'n': str(size)})}"
        items: list[Any] = []
        while url is not None and (limit is None or len(items) < limit):
            document, link = self._request("GET", url, None)
            items.extend(document[key])
            url = _next_page(link)
        return {key: items if limit is None else items[:limit]}

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[Any, str | None]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["content-type"] = "application/json"
        request = urllib.request.Request(self.base + path, method=method, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.context) as response:
                raw = response.read()
                link = response.headers.get("link")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _message(exc.read())) from None
        except urllib.error.URLError as exc:
            raise ApiError(0, unreachable(self.base, exc)) from None
        except OSError as exc:  # a reset or a timeout mid-answer
            raise ApiError(0, f"{self.base} did not answer: {exc}") from None
        return (json.loads(raw) if raw else None), link


def unreachable(base: str, exc: urllib.error.URLError) -> str:
    """One line on why the registry could not be reached, with the remedy for a certificate that is
    not trusted (the CA of `shipyard certs` is not in the system's store)."""
    if isinstance(exc.reason, ssl.SSLCertVerificationError):
        return (
            f"cannot verify the TLS certificate of {base} ({exc.reason.verify_message}): "
            "give --cacert FILE with the CA certificate that signed it (e.g. certs/ca.crt)"
        )
    return f"cannot reach {base}: {exc.reason}"


def read_password(user: str) -> str:
    """SHIPYARD_PASSWORD, else a prompt on the terminal; without a terminal, say what to do."""
    password = os.environ.get("SHIPYARD_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise ApiError(0, f"no terminal to ask for the password of {user}: set SHIPYARD_PASSWORD")
    try:
        return getpass.getpass(f"password for {user}: ")
    except EOFError:
        raise ApiError(0, f"no password given for {user}: set SHIPYARD_PASSWORD") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def _next_page(link: str | None) -> str | None:
    """The path of `Link: <path>; rel="next"`, which the API makes relative to the registry."""
    if not link or 'rel="next"' not in link:
        return None
    target = link.partition("<")[2].partition(">")[0]
    return target if target.startswith("/api/v1/") else None


def _message(raw: bytes) -> str:
    """The server's own words: the detail of each error (what exactly is wrong), else its message."""
    try:
        errors = json.loads(raw)["errors"]
        return "; ".join(f"{_detail(e) or e.get('message')} ({e.get('code')})" for e in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw.decode(errors="replace")[:500]


def _detail(error: dict[str, Any]) -> str | None:
    detail = error.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict | list) and detail:
        return json.dumps(detail)
    return None


def _q(value: str) -> str:
    return quote(value, safe="")


def _repo_path(name: str) -> str:
    return "/".join(_q(part) for part in name.split("/"))


# -- output ------------------------------------------------------------------------------------

PRINCIPAL_COLUMNS = ("login", "role", "disabled", "description", "created_at")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        if isinstance(value, dict):
            return " ".join(f"{k}:{','.join(v)}" for k, v in value.items())
        return "" if value is None else str(value)

    cells = [[cell(row, c) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _show(args: argparse.Namespace, document: Any, key: str | None, columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(document, indent=2))
        return
    if document is None:
        print("done")
        return
    rows = document[key] if key else [document]
    print(table(rows, columns))
    if isinstance(document, dict) and document.get("secret"):
        print(
            f"\nsecret for {document['login']}:\n    {document['secret']}\n"
            "WARNING: store it now; it will not be shown again.",
        )


# -- commands ----------------------------------------------------------------------------------


def _principals(kind: str) -> dict[str, Command]:
    base = {"users": "users", "robots": "robots"}[kind]

    def path(args: argparse.Namespace) -> str:
        return f"/api/v1/accounts/{_q(args.account)}/{base}"

    def create(c: Client, a: argparse.Namespace) -> Any:
        body: dict[str, Any] = {"name": a.name, "role": a.role}
        if kind == "robots" and a.description:
            body["description"] = a.description
        if kind == "users" and a.password_env:
            body["password"] = os.environ[a.password_env]
        return c.call("POST", path(a), body)

    def login_of(a: argparse.Namespace) -> str:
        return f"{a.account}+{a.name}" if kind == "robots" else a.name

    return {
        "list": lambda c, a: c.listing(path(a), base, a.limit),
        "create": create,
        "delete": lambda c, a: c.call("DELETE", f"{path(a)}/{_q(a.name)}"),
        "disable": lambda c, a: c.call("PATCH", f"{path(a)}/{_q(a.name)}", {"disabled": not a.enable}),
        "role": lambda c, a: c.call("PATCH", f"{path(a)}/{_q(a.name)}", {"role": a.role}),
        "reset-secret": lambda c, a: c.call("PATCH", f"{path(a)}/{_q(a.name)}", {"reset_secret": True}),
        "revoke": lambda c, a: c.call(
            "POST", f"/api/v1/accounts/{_q(a.account)}/principals/{_q(login_of(a))}/revoke"
        ),
    }


def _split(name: str) -> tuple[str, str]:
    account, sep, rest = name.partition("/")
    if not sep or not rest:
        raise ApiError(0, f"a repository name is ACCOUNT/NAME, not {name!r}")
    return account, rest


COMMANDS: dict[str, dict[str, Command]] = {
    "whoami": {"": lambda c, a: c.call("GET", "/api/v1/whoami")},
    "accounts": {
        "list": lambda c, a: c.listing("/api/v1/accounts", "accounts", a.limit),
        "create": lambda c, a: c.call("POST", "/api/v1/accounts", {"name": a.name}),
        "delete": lambda c, a: c.call("DELETE", f"/api/v1/accounts/{_q(a.name)}"),
        "disable": lambda c, a: c.call("PATCH", f"/api/v1/accounts/{_q(a.name)}", {"disabled": not a.enable}),
        "usage": lambda c, a: c.call("GET", f"/api/v1/accounts/{_q(a.name)}/usage"),
    },
    "users": _principals("users"),
    "robots": _principals("robots"),
    "access-keys": {
        "list": lambda c, a: c.listing(
            f"/api/v1/accounts/{_q(a.account)}/access-keys", "access_keys", a.limit
        ),
        "create": lambda c, a: c.call(
            "POST", f"/api/v1/accounts/{_q(a.account)}/access-keys", {"description": a.description}
        ),
        "delete": lambda c, a: c.call(
            "DELETE", f"/api/v1/accounts/{_q(a.account)}/access-keys/{_q(a.key_id)}"
        ),
    },
    "repos": {
        "list": lambda c, a: c.listing(
            f"/api/v1/accounts/{_q(a.account)}/repositories", "repositories", a.limit
        ),
        "create": lambda c, a: c.call(
            "POST",
            f"/api/v1/accounts/{_q(_split(a.name)[0])}/repositories",
            {"name": _split(a.name)[1], "visibility": "public" if a.public else "private"},
        ),
        "show": lambda c, a: c.call("GET", f"/api/v1/repositories/{_repo_path(a.name)}"),
        "delete": lambda c, a: c.call("DELETE", f"/api/v1/repositories/{_repo_path(a.name)}"),
        "visibility": lambda c, a: c.call(
            "PATCH", f"/api/v1/repositories/{_repo_path(a.name)}", {"visibility": a.visibility}
        ),
        "grant": lambda c, a: c.call(
            "PUT",
            f"/api/v1/repositories/{_repo_path(a.name)}/policies/{_q(a.account)}",
            {"actions": ["pull", "push"] if a.push else ["pull"]},
        ),
        "revoke": lambda c, a: c.call(
            "DELETE", f"/api/v1/repositories/{_repo_path(a.name)}/policies/{_q(a.account)}"
        ),
        "policies": lambda c, a: c.listing(
            f"/api/v1/repositories/{_repo_path(a.name)}/policies", "policies", a.limit
        ),
        "untagged-retention": lambda c, a: c.call(
            "PUT",
            f"/api/v1/repositories/{_repo_path(a.name)}/untagged-retention",
            {"untagged_retention_days": None if a.days == "never" else _days(a.days)},
        ),
    },
    "audit": {
        "list": lambda c, a: c.listing(
            "/api/v1/audit", "events", a.limit, {"account": a.account} if a.account else None
        ),
    },
}

# (group, action) -> (key of the list in the document, columns)
OUTPUT: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "whoami": (None, ("login", "account", "kind", "role", "superuser")),
    "accounts": ("accounts", ("name", "disabled", "created_at")),
    "users": ("users", PRINCIPAL_COLUMNS),
    "robots": ("robots", PRINCIPAL_COLUMNS),
    "access-keys": ("access_keys", PRINCIPAL_COLUMNS),
    "repos": (
        "repositories",
        ("name", "visibility", "policies", "actions", "stored_bytes", "unique_bytes", "shared_bytes"),
    ),
    "audit": ("events", ("at", "principal", "source", "action", "account", "target", "outcome", "reason")),
}
# listings whose items are not those of their group's other commands
LIST_OUTPUT: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("repos", "policies"): ("policies", ("account", "actions")),
}
# single answers shown with other columns than their group's
SHOW_OUTPUT: dict[tuple[str, str], tuple[str, ...]] = {
    ("accounts", "usage"): ("account", "stored_bytes", "unique_bytes", "shared_bytes", "blobs"),
}


def _days(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ApiError(0, f"invalid number of days {value!r}: a whole number, or never") from None


def open_client(args: argparse.Namespace) -> Client | None:
    """A client of the registry and user that the options or the environment name; None, after saying
    which is missing, when one is not given."""
    registry = args.registry or os.environ.get("SHIPYARD_REGISTRY")
    if not registry:
        print("shipyard: give --registry URL or set SHIPYARD_REGISTRY", file=sys.stderr)
        return None
    user = args.user or os.environ.get("SHIPYARD_USER")
    if not user:
        print("shipyard: give -u/--user or set SHIPYARD_USER", file=sys.stderr)
        return None
    return Client(registry, user, read_password(user), args.cacert)


def add_connection(p: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int]) -> None:
    """The options of every command that calls the management API, which `command` then runs."""
    p.add_argument("--registry", help="registry URL, e.g. https://127.0.0.1:5000 (or SHIPYARD_REGISTRY)")
    p.add_argument("-u", "--user", help="login: user, access key id or robot (or SHIPYARD_USER)")
    p.add_argument("--cacert", type=Path, help="CA certificate to trust for HTTPS")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.set_defaults(func=command)


def add_limit(p: argparse.ArgumentParser, default: int | None, what: str = "items") -> None:
    every = "all" if default is None else str(default)
    p.add_argument(
        "--limit",
        type=_positive,
        default=default,
        metavar="N",
        help=f"print at most N {what} (default: {every})",
    )


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", "") or ""
    try:
        client = open_client(args)
        if client is None:
            return 2
        document = COMMANDS[args.command][action](client, args)
    except ApiError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return 1
    if (args.command, action) in SHOW_OUTPUT:
        _show(args, document, None, SHOW_OUTPUT[args.command, action])
        return 0
    if (args.command, action) in LIST_OUTPUT:
        key, columns = LIST_OUTPUT[args.command, action]
        _show(args, document, key, columns)
        return 0
    list_key, columns = OUTPUT[args.command]
    _show(args, document, list_key if action == "list" else None, columns)
    return 0


def register(sub: Any) -> None:
    """Add the management commands to the top-level subparsers of `shipyard`."""

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

    whoami = sub.add_parser("whoami", help="show who the credentials log in as")
    connection(whoami)

    accounts = group("accounts", "manage accounts (registry administrators)")
    listing(accounts.add_parser("list", help="list accounts"))
    for action, text in (("create", "create an account"), ("delete", "delete an account")):
        p = accounts.add_parser(action, help=text)
        p.add_argument("name")
        connection(p)
    p = accounts.add_parser("disable", help="disable an account (its members cannot log in)")
    p.add_argument("name")
    p.add_argument("--enable", action="store_true", help="enable it again")
    connection(p)
    p = accounts.add_parser("usage", help="bytes an account stores: unique and shared with other accounts")
    p.add_argument("name")
    connection(p)

    for kind, text in (("users", "user"), ("robots", "robot account")):
        roles = ["admin", "writer", "reader"] if kind == "users" else ["writer", "reader"]
        g = group(kind, f"manage {text}s of an account")
        p = g.add_parser("list", help=f"list {text}s")
        p.add_argument("account")
        listing(p)
        p = g.add_parser("create", help=f"create a {text}; prints its secret once")
        p.add_argument("account")
        p.add_argument("name")
        p.add_argument("--role", choices=roles, default="reader")
        if kind == "users":
            p.add_argument(
                "--password-env",
                metavar="VAR",
                help="take the password from this variable (default: generate)",
            )
        else:
            p.add_argument("--description")
        connection(p)
        for action, help_text in (
            ("delete", f"delete a {text}"),
            ("reset-secret", "give it a new secret (printed once)"),
            ("revoke", "invalidate its login passwords"),
        ):
            p = g.add_parser(action, help=help_text)
            p.add_argument("account")
            p.add_argument("name")
            connection(p)
        p = g.add_parser("disable", help=f"disable a {text}")
        p.add_argument("account")
        p.add_argument("name")
        p.add_argument("--enable", action="store_true", help="enable it again")
        connection(p)
        p = g.add_parser("role", help="change the role")
        p.add_argument("account")
        p.add_argument("name")
        p.add_argument("role", choices=roles)
        connection(p)

    keys = group("access-keys", "manage access keys (your own; an account admin sees all)")
    p = keys.add_parser("list", help="list access keys")
    p.add_argument("account")
    listing(p)
    p = keys.add_parser("create", help="create an access key of yours; prints its secret once")
    p.add_argument("account")
    p.add_argument("--description")
    connection(p)
    p = keys.add_parser("delete", help="delete an access key")
    p.add_argument("account")
    p.add_argument("key_id")
    connection(p)

    repos = group("repos", "manage repositories, their visibility and policies")
    p = repos.add_parser("list", help="list an account's repositories you may pull")
    p.add_argument("account")
    listing(p)
    p = repos.add_parser("create", help="create an empty repository ACCOUNT/NAME")
    p.add_argument("name")
    p.add_argument("--public", action="store_true", help="anyone may pull")
    connection(p)
    for action, text in (("show", "show a repository"), ("delete", "delete a repository and its content")):
        p = repos.add_parser(action, help=text)
        p.add_argument("name")
        connection(p)
    p = repos.add_parser("visibility", help="make a repository private or public")
    p.add_argument("name")
    p.add_argument("visibility", choices=["private", "public"])
    connection(p)
    p = repos.add_parser("grant", help="let another account pull (and with --push, push)")
    p.add_argument("name")
    p.add_argument("account")
    p.add_argument("--push", action="store_true")
    connection(p)
    p = repos.add_parser("revoke", help="remove another account's policy")
    p.add_argument("name")
    p.add_argument("account")
    connection(p)
    p = repos.add_parser("policies", help="list the accounts a repository is shared with")
    p.add_argument("name")
    listing(p)
    p = repos.add_parser(
        "untagged-retention", help="let GC delete manifests untagged for DAYS days (never: keep them)"
    )
    p.add_argument("name")
    p.add_argument("days", help="a whole number of days, or never")
    connection(p)

    audit = group(
        "audit", "read the audit log (account admins: their account's; registry administrators: all)"
    )
    p = audit.add_parser("list", help="list audit events, newest first")
    p.add_argument("--account", help="only this account's events")
    listing(p, AUDIT_LIMIT)
