"""PostgreSQL databases whose default collation is not byte order.

The session server's default (C.UTF-8) sorts bytewise, which would hide a query or a column that
forgets the C collation; an ICU en-US database ("_x" < "1.0" < "a" < "A") shows it."""

from __future__ import annotations

import uuid

import psycopg

from tests.support.postgres import PostgresServer


def icu_database(server: PostgresServer) -> str:
    name = f"shipyard_icu_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(
                f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                "LOCALE 'C.UTF-8'"
            )
    except psycopg.Error:
        return server.create_database()  # a server without ICU: the test still runs, less sharply
    return f"{server.admin_url.rsplit('/', 1)[0]}/{name}"
