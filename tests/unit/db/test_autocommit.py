"""The free list of PostgreSQL autocommit connections behind the single statements of hot paths."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from shipyard.db.engine import AutocommitConnections, make_engine
from tests.support.postgres import PostgresServer


@pytest.fixture
def pg_engine(postgres: PostgresServer) -> Iterator[Engine]:
    engine = make_engine(postgres.create_database())
    yield engine
    engine.dispose()


def backend(connections: AutocommitConnections) -> int:
    with connections.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def open_backends(engine: Engine, expected: set[int] | None = None) -> set[int]:
    """The other sessions on the test's database; with `expected`, once they are that (a backend whose
    client closed leaves pg_stat_activity a moment later) or after 5 s."""
    query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + 5
    while True:
        with engine.connect() as conn:
            now = {int(row[0]) for row in conn.exec_driver_sql(query)}
        if expected is None or now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_a_statement_reuses_the_connection_the_last_one_returned(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    first = backend(connections)
    assert backend(connections) == first
    connections.close()


def test_each_statement_commits_by_itself(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    with connections.cursor() as cursor:
        cursor.execute("CREATE TABLE t (x int)")
        cursor.execute("INSERT INTO t VALUES (1)")
    # another connection sees the row at once: nothing was left in an open transaction
    with psycopg.connect(
        pg_engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
    ) as other:
        assert other.execute("SELECT x FROM t").fetchall() == [(1,)]
    connections.close()


def test_statements_running_at_once_get_connections_of_their_own(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    with connections.cursor() as outer:
        outer.execute("SELECT pg_backend_pid()")
        inner = backend(connections)
        assert int(outer.fetchone()[0]) != inner
    connections.close()


def test_a_failed_statement_closes_its_connection(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    first = backend(connections)
    with pytest.raises(psycopg.errors.DivisionByZero), connections.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    now = backend(connections)
    assert now != first
    assert open_backends(pg_engine, {now}) == {now}
    connections.close()


def test_a_connection_left_inside_a_transaction_is_not_kept(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    with connections.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT pg_backend_pid()")
        first = int(cursor.fetchone()[0])
    now = backend(connections)
    assert now != first
    assert open_backends(pg_engine, {now}) == {now}
    connections.close()


def test_no_more_than_keep_stay_idle(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine, keep=2)
    pids = []
    with contextlib.ExitStack() as stack:
        for _ in range(4):
            cursor = stack.enter_context(connections.cursor())
            cursor.execute("SELECT pg_backend_pid()")
            pids.append(int(cursor.fetchone()[0]))
        assert open_backends(pg_engine, set(pids)) == set(pids)
    # the stack returns them last to first: the two returned last stay idle, the others were closed
    assert open_backends(pg_engine, set(pids[:2])) == set(pids[:2])
    connections.close()
    assert open_backends(pg_engine, set()) == set()


def test_close_closes_the_idle_and_then_those_in_use(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    with connections.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        in_use = int(cursor.fetchone()[0])
        idle = backend(connections)  # a second connection, idle once its statement ends
        assert open_backends(pg_engine, {in_use, idle}) == {in_use, idle}
        connections.close()
        assert open_backends(pg_engine, {in_use}) == {in_use}
    assert open_backends(pg_engine, set()) == set()


def test_a_list_dropped_without_close_closes_its_connections(pg_engine: Engine) -> None:
    connections = AutocommitConnections(pg_engine)
    backend(connections)
    assert len(open_backends(pg_engine)) == 1
    del connections
    gc.collect()
    assert open_backends(pg_engine, set()) == set()
