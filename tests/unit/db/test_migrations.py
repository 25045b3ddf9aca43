from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, inspect, text

from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.db.models import Base
from tests.support.postgres import PostgresServer
from tests.unit.db.databases import icu_database


def downgrade(engine: Engine, revision: str = "base") -> None:
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def test_the_migrations_have_one_head() -> None:
    scripts = ScriptDirectory(str(migrate.MIGRATIONS))
    assert len(scripts.get_heads()) == 1
    # a straight line from base to head
    revisions = list(scripts.walk_revisions())
    assert revisions[-1].down_revision is None
    assert all(len(r.nextrev) <= 1 for r in revisions)


def test_check_fails_on_an_empty_database(engine: Engine) -> None:
    with pytest.raises(CommandError, match="not up to date"):
        migrate.check(engine)


def test_upgrade_to_head_then_the_models_match_the_migrations(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert tables(engine) == set(Base.metadata.tables)
    assert current_revision(engine) == ScriptDirectory(str(migrate.MIGRATIONS)).get_current_head()
    migrate.check(engine)
    # upgrading again is a no-op
    migrate.upgrade(engine)
    migrate.check(engine)


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    migrate.upgrade(engine)
    downgrade(engine)
    assert tables(engine) == set()
    assert current_revision(engine) is None
    migrate.upgrade(engine)
    assert tables(engine) == set(Base.metadata.tables)
    migrate.check(engine)


def test_names_and_tags_sort_bytewise_on_postgresql(postgres: PostgresServer) -> None:
    # the migration, not only the model, must give these columns the C collation
    engine = make_engine(icu_database(postgres))
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            collations = dict(
                conn.execute(
                    text(
                        "SELECT table_name || '.' || column_name, collation_name"
                        " FROM information_schema.columns"
                        " WHERE table_name IN ('tags', 'repositories') AND column_name = 'name'"
                    )
                ).all()
            )
    finally:
        engine.dispose()
    assert collations == {"tags.name": "C", "repositories.name": "C"}
