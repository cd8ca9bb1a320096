"""Backup and restore of a whole admin store as one JSON document.

A backup is every row of every table (secrets stay sealed: keep the secret key with it)
and the schema revision it was taken at. Restore fills an empty, migrated store, on
either backend, in one transaction, and moves PostgreSQL's id sequences past the rows.
"""

from __future__ import annotations

import time

import orjson
from sqlalchemy import func, select, text

from . import schema
from .store import Store, migrate

FORMAT = "edgeplane-backup"


def backup(store: Store) -> bytes:
    with store.reading() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        tables = {str(table.name): [{str(key): value for key, value in row._mapping.items()}  # keys may be quoted_name
                               for row in connection.execute(select(table))]
                  for table in schema.metadata.sorted_tables}
    return orjson.dumps({"format": FORMAT, "revision": revision, "taken_at": time.time(), "tables": tables})


def restore(store: Store, document: bytes) -> dict[str, int]:
    data = orjson.loads(document)
    if data.get("format") != FORMAT:
        raise ValueError("not an edgeplane backup (expected the JSON written by `edgeplane admin backup`)")
    migrate(store.engine)
    counts = {}
    with store.transaction() as connection:
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        if revision != data["revision"]:
            raise ValueError(f"the backup is of schema revision {data['revision']}, this store is at {revision}")
        for table in (schema.users, schema.objects, schema.releases, schema.nodes):
            if connection.execute(select(func.count()).select_from(table)).scalar():
                raise ValueError(f"the store is not empty (table {table.name} has rows); restore into an empty store")
        for table in schema.metadata.sorted_tables:
            rows = data["tables"].get(table.name, [])
            connection.execute(table.delete())
            if rows:
                connection.execute(table.insert(), rows)
            counts[table.name] = len(rows)
        if store.backend == "postgresql":
            for table in schema.metadata.sorted_tables:
                column = table.c.get("id")
                if column is not None and column.autoincrement is True:
                    connection.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table.name}), false)"))
    return counts
