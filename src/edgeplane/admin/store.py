"""The admin's store: one SQLAlchemy engine on SQLite (WAL, the default) or PostgreSQL.

Owns connecting, migrating (Alembic, at every start) and transactions: every write runs in
one `transaction()`, so a killed admin leaves either all of a change or none of it. SQLite
transactions begin IMMEDIATE (one writer at a time, never a lock upgrade that fails
halfway), except `reading()` ones; on PostgreSQL writers serialize on the `counters` rows
they lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.engine import make_url

from . import schema

MIGRATIONS = Path(__file__).with_name("migrations")
READ_ONLY = "edgeplane_read_only"  # execution option of `Store.reading` connections


def store_url(store: str | None, data_dir: Path) -> str:
    """`--store` as given (postgresql:// means psycopg 3), or SQLite in the data directory."""
    if not store:
        return f"sqlite:///{data_dir / 'admin.db'}"
    url = make_url(store)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(connection, _record) -> None:  # noqa: ANN001
            connection.isolation_level = None  # transactions are begun below, not by pysqlite
            cursor = connection.cursor()
            for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection) -> None:  # noqa: ANN001
            deferred = connection.get_execution_options().get(READ_ONLY, False)
            connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; safe with several admins)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # several admins starting at once migrate one at a time
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7460001)")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url)
        self.backend = self.engine.dialect.name

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A transaction that only reads: on SQLite it takes no write lock, so the many
        reads of syncing nodes never wait for each other."""
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as connection, connection.begin():
            yield connection

    def lock(self, connection: Connection, counter: str) -> int:
        """Lock one counter row for the rest of the transaction; returns its value."""
        query = select(schema.counters.c.value).where(schema.counters.c.name == counter)
        if self.backend == "postgresql":
            query = query.with_for_update()
        return connection.execute(query).scalar_one()

    def bump(self, connection: Connection, counter: str) -> int:
        """The counter's next value, taken inside the caller's transaction (never forks)."""
        value = self.lock(connection, counter) + 1
        connection.execute(schema.counters.update().where(schema.counters.c.name == counter).values(value=value))
        return value

    def close(self) -> None:
        self.engine.dispose()
