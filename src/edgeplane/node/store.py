"""The node's local store: the last release it received, in SQLite in its data directory.

The master writes each release the admin sends (a delta or a full snapshot) in one
transaction, so the store always holds one whole release; workers read it to build their
config, reusing the validated objects of the previous read where the bytes did not
change. A node restarted while the admin is down starts from here. Nothing here talks to
the network.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from ..model.config import Config
from ..model.kinds import KINDS
from ..model.load import ConfigError, Problem, problems_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
                                    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LocalStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        fresh = not self.path.exists()
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)  # it holds private keys
        self.db.execute("PRAGMA journal_mode=WAL")
        # A crash of the node loses no committed release; a power cut may lose the last one,
        # which the admin sends again: not worth an fsync per release.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def version(self) -> int:
        return int(self.meta("version", "0"))

    def write(self, release: dict) -> None:
        """Store a release from the admin's sync answer: all of it, or the delta from ours."""
        rows = [(o["kind"], o["name"], orjson.dumps(o["data"])) for o in release["objects"]]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if release["full"]:
                self.db.execute("DELETE FROM objects")
            self.db.executemany("DELETE FROM objects WHERE kind = ? AND name = ?", release["deleted"])
            self.db.executemany("INSERT OR REPLACE INTO objects (kind, name, data) VALUES (?, ?, ?)", rows)
            self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                [("version", str(release["version"])), ("partition", release["partition"])])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def read(self, skip: frozenset[str] = frozenset()) -> tuple[int, str, list[tuple[str, str, bytes]]]:
        """(version, partition, objects) as of one consistent moment; `skip`: kinds left out
        (the master's node-wide work needs no applications)."""
        self.db.execute("BEGIN")
        try:
            version = self.version
            partition = self.meta("partition", "default")
            rows = self.db.execute(f"SELECT kind, name, data FROM objects WHERE kind NOT IN ({','.join('?' * len(skip))})",
                                   sorted(skip)).fetchall()
        finally:
            self.db.execute("COMMIT")
        return version, partition, rows

    def close(self) -> None:
        self.db.close()


class ConfigBuilder:
    """Builds a `Config` from store rows, validating only objects whose bytes changed.

    Each object is validated by its model class (the node may run another version than the
    admin), but not the references between objects: the admin checked the whole draft
    before storing it, so every release it made is whole, and checking 100,000 rules
    again here would cost a one-rule change most of its second."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], tuple[bytes, BaseModel]] = {}

    def build(self, rows: list[tuple[str, str, bytes]], source: str) -> Config:
        fields: dict[str, Any] = {kind: [] for kind, k in KINDS.items() if not k.singleton}
        cache: dict[tuple[str, str], tuple[bytes, BaseModel]] = {}
        problems: list[Problem] = []
        for kind, name, data in sorted(rows):
            hit = self.cache.get((kind, name))
            if hit is not None and hit[0] == data:
                instance = hit[1]
            elif kind not in KINDS:
                problems.append(Problem(f"{kind}/{name}", f"unknown kind {kind!r}: this node is older than the admin"))
                continue
            else:
                try:
                    instance = KINDS[kind].model.model_validate_json(data)
                except ValidationError as error:
                    where = f"{kind}/{name}." if name else f"{kind}."
                    problems += [Problem(where + p.path, p.message) for p in problems_of(error.errors(include_url=False))]
                    continue
            cache[(kind, name)] = (data, instance)
            if KINDS[kind].singleton:
                fields[kind] = instance
            else:
                fields[kind].append(instance)
        if problems:
            raise ConfigError(source, problems)
        self.cache = cache
        return Config.model_construct(**fields)
