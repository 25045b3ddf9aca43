"""Engines for SQLite (WAL, the embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed.set(drivername="sqlite+pysqlite"),
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=32,
        )
        _sqlite_events(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            pool_size=pool_size,
            max_overflow=32,
            pool_pre_ping=False,
        )
    raise ValueError(f"unsupported database backend: {parsed.get_backend_name()!r}")


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event, not the driver, open transactions (so writes can BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        # A write transaction takes the write lock up front: two readers upgrading to writers would
        # otherwise deadlock with SQLITE_BUSY that no busy timeout resolves.
        if connection.get_execution_options().get("shipyard_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        connection = connection.execution_options(shipyard_write=True)
        with connection.begin():
            yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection, connection.begin():
        yield connection


@contextmanager
def autocommit(engine: Engine) -> Iterator[Any]:
    """A DBAPI cursor on which every statement is a transaction of its own: one round trip on
    PostgreSQL where a transaction costs three (BEGIN, the statement, COMMIT), and no SQLAlchemy
    layer in between. For the single statements of hot paths; the SQL is the dialect's own."""
    raw = engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            driver.autocommit = True
        cursor = driver.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
            if postgres and not driver.closed:
                driver.autocommit = False
    finally:
        raw.close()
