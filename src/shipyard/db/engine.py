"""Engines for SQLite (WAL, the embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import collections
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

# libpq waits for ever by default on a host that accepts nothing or never answers: `serve`, `migrate`
# and `config check` would hang instead of saying what is wrong. A URL's own connect_timeout wins.
CONNECT_TIMEOUT_SECONDS = 10


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
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if "connect_timeout" in parsed.query:
            connect_args = {}
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            connect_args=connect_args,
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


class AutocommitConnections:
    """PostgreSQL connections in autocommit mode for the single statements of hot paths, kept idle on a
    free list between statements: a statement costs its round trip and a list pop and append, where
    `autocommit` pays the pool's checkout and checkin around it (~60 µs of CPU a statement here).

    At most `keep` stay idle (the rest close when returned); the list grows only as far as statements
    run at once. A connection that fails, or is left inside a transaction, is closed rather than kept."""

    def __init__(self, engine: Engine, *, keep: int = 16) -> None:
        self._engine = engine
        self._keep = keep
        self._idle: collections.deque[Any] = collections.deque()
        self._closed = False
        # a store dropped without close() still closes what it kept (psycopg warns of open connections)
        self._finalizer = weakref.finalize(self, _close_idle, self._idle)

    def _connect(self) -> Any:
        import psycopg

        args, options = self._engine.dialect.create_connect_args(self._engine.url)
        return psycopg.connect(*args, **options, autocommit=True)

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        try:
            conn = self._idle.pop()  # deque.pop and append are atomic: no lock
        except IndexError:
            conn = self._connect()
        reusable = False
        try:
            with conn.cursor() as cursor:
                yield cursor
            reusable = True
        finally:
            if reusable and not self._closed and not conn.closed and _idle_in_no_transaction(conn):
                self._keep_idle(conn)
            else:
                conn.close()

    def _keep_idle(self, conn: Any) -> None:
        self._idle.append(conn)
        if len(self._idle) > self._keep:
            self._close_one()
        if self._closed:  # close() ran meanwhile
            _close_idle(self._idle)

    def _close_one(self) -> None:
        with suppress(IndexError):
            self._idle.popleft().close()

    def close(self) -> None:
        """Close the idle connections; those in use close when their statement ends."""
        self._closed = True
        self._finalizer()


def _close_idle(idle: collections.deque[Any]) -> None:
    while idle:
        with suppress(IndexError):
            idle.popleft().close()


def _idle_in_no_transaction(conn: Any) -> bool:
    from psycopg.pq import TransactionStatus

    return bool(conn.info.transaction_status == TransactionStatus.IDLE)
