"""Alembic migrations of the job store, run programmatically (``sg db upgrade`` or at start-up)."""
from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent
#: Any constant is fine; it only has to be the same in every process of the deployment.
PG_MIGRATION_LOCK = 0x5347_0001


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """Serialise migrations across processes: an advisory lock on PostgreSQL, a file lock on SQLite."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
        elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            with open(f"{engine.url.database}.migrate-lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                yield conn
        else:
            yield conn


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the job store schema to ``revision``."""
    # Alembic logs a line per plugin at INFO on every call, i.e. on every gateway and worker start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    with _migration_lock(engine) as conn:
        command.upgrade(alembic_config(conn), revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
