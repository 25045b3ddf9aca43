"""Apply and check Alembic migrations programmatically (no alembic.ini needed).

Alembic is imported inside the functions: its import logs a line per plugin at INFO, and a worker
importing the application has its logging set up already, before it can tell alembic to be quiet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    # the stream of now: a default bound at import would keep whatever sys.stdout was then
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic keeps its options in a ConfigParser, which reads "%" as interpolation: a percent-escaped
    # password or query ("p%40ss", "?host=%2Ftmp") must reach it doubled
    url = engine.url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def pending(engine: Engine) -> bool:
    """Whether the database's schema is behind the migrations (also on a database never migrated)."""
    return current_revisions(engine) != head_revisions()


def check(engine: Engine) -> None:
    """Raise if the models and the migrations disagree."""
    from alembic import command

    config = alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.check(config)


def revision(engine: Engine, message: str) -> None:
    from alembic import command

    config = alembic_config(engine)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)


def head_revisions() -> set[str]:
    """The heads of the migrations shipped with this code (read once: they do not change at run time)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    # the stream of now: a default bound at import would keep whatever sys.stdout was then
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(config).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def require_at_head(engine: Engine, heads: set[str]) -> None:
    current = current_revisions(engine)
    if current != heads:
        raise RuntimeError(f"database schema at {sorted(current)}, this code needs {sorted(heads)}")
