"""The draft: the objects as they are now, before any release, and every change to them.

A write (one object or a batch from `apply`) runs in one transaction: it locks the draft,
validates each new object with its model class, validates the whole draft's references
with `Config` (unchanged objects are reused as validated instances, not parsed again),
then stores the objects and records one change per object (actor, time, before, after).
Nothing invalid is stored: the first problem aborts the whole transaction. This module
knows nothing of HTTP or users beyond the actor's name.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, bindparam, select

from ..collector import collector_paused, settle_collector
from ..model.config import Config
from ..model.kinds import KINDS, Kind, canonical, digest, object_key
from ..model.load import Problem, problems_of
from . import schema
from .secrets import SecretBox
from .store import Store


class Invalid(Exception):
    """The write would make the draft invalid: nothing was stored."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(f"{p.path}: {p.message}" for p in problems))


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


@dataclass(frozen=True)
class Stored:
    """One object: its validated instance, canonical JSON and hash."""

    kind: str
    name: str
    instance: BaseModel
    data: bytes
    hash: str

    @classmethod
    def of(cls, kind: str, name: str, instance: BaseModel) -> Stored:
        data = canonical(instance)
        return cls(kind, name, instance, data, digest(data))


@dataclass(frozen=True)
class Edit:
    """One object to put (instance) or delete (instance None)."""

    kind: str
    name: str
    instance: BaseModel | None


def validate(kind: Kind, data: Any, prefix: str = "") -> BaseModel:
    try:
        return kind.model.model_validate(data)
    except ValidationError as error:
        problems = problems_of(error.errors(include_url=False))
        raise Invalid([Problem(f"{prefix}{p.path}" if p.path else prefix.rstrip("."), p.message)
                       for p in problems]) from None


RESTORING = ("discard", "rollback")  # changes that put back released objects: never pending themselves
CONTROLLED = "canary"  # the canary controller's changes: released as they are made, never pending
BULK = 1000  # objects validated at once after which the collector is settled
_INDEXED = re.compile(r"^([a-z_]+)\[(\d+)\]")


class Draft:
    """Reads and writes the draft of one store; keeps validated instances by hash."""

    def __init__(self, store: Store, box: SecretBox):
        self.store = store
        self.box = box
        self.cache: dict[tuple[str, str], Stored] = {}
        self.cache_lock = threading.Lock()

    # --- reading -----------------------------------------------------------------------

    def load(self, connection: Connection) -> dict[tuple[str, str], Stored]:
        """Every object of the draft, validated instances reused when the hash is unchanged."""
        with self.cache_lock:
            return self._load(connection)

    def _load(self, connection: Connection) -> dict[tuple[str, str], Stored]:
        rows = connection.execute(select(schema.objects.c.kind, schema.objects.c.name, schema.objects.c.hash)).all()
        missing = {(r.kind, r.name): r.hash for r in rows
                   if (hit := self.cache.get((r.kind, r.name))) is None or hit.hash != r.hash}
        with collector_paused():
            for kind, name, text in self.fetch(connection, list(missing)):
                self.cache[(kind, name)] = self.stored(kind, name, text, missing[(kind, name)])
        present = {(r.kind, r.name) for r in rows}
        for key in [k for k in self.cache if k not in present]:
            del self.cache[key]
        if len(missing) >= BULK:
            settle_collector()
        return dict(self.cache)

    def one(self, connection: Connection, kind: str, name: str) -> Stored | None:
        """One object of the draft (without reading the others)."""
        table = schema.objects
        row = connection.execute(select(table.c.hash).where(table.c.kind == kind, table.c.name == name)).first()
        if row is None:
            return None
        with self.cache_lock:
            hit = self.cache.get((kind, name))
            if hit is None or hit.hash != row.hash:
                (_, _, text), = self.fetch(connection, [(kind, name)])
                hit = self.cache[(kind, name)] = self.stored(kind, name, text, row.hash)
        return hit

    def fetch(self, connection: Connection, keys: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """(kind, name, stored text) of these objects."""
        if not keys:
            return []
        table = schema.objects
        wanted = set(keys)
        if len(keys) > 500:
            rows = connection.execute(select(table.c.kind, table.c.name, table.c.data)).all()
        else:
            rows = []
            for kind in {k for k, _ in keys}:
                names = [n for k, n in keys if k == kind]
                rows += connection.execute(select(table.c.kind, table.c.name, table.c.data)
                                           .where(table.c.kind == kind, table.c.name.in_(names))).all()
        return [(r.kind, r.name, r.data) for r in rows if (r.kind, r.name) in wanted]

    def stored(self, kind: str, name: str, text: str, stored_hash: str) -> Stored:
        """An object as stored: without secrets its stored text is already its canonical
        form, used as it is (not dumped again)."""
        instance = KINDS[kind].model.model_validate(self.open(kind, text))
        if KINDS[kind].secret_paths:
            return Stored.of(kind, name, instance)
        return Stored(kind, name, instance, text.encode(), stored_hash)

    def open(self, kind: str, text: str | bytes) -> dict:
        return self.box.open(orjson.loads(text), KINDS[kind].secret_paths)

    def seal(self, kind: str, data: bytes) -> str:
        paths = KINDS[kind].secret_paths
        return (orjson.dumps(self.box.seal(orjson.loads(data), paths)) if paths else data).decode()

    # --- writing -----------------------------------------------------------------------

    def write(self, actor: str, edits: list[Edit], expect_new: bool = False,
              expect_existing: bool = False) -> list[dict]:
        """Apply edits in one transaction; returns the change records. `expect_new` makes a
        put of an existing object a conflict (POST); `expect_existing` makes a missing one
        not found (PUT, DELETE)."""
        with self.store.transaction() as connection:
            self.store.lock(connection, "draft")
            return self.write_in(connection, actor, edits, expect_new, expect_existing)

    def write_in(self, connection: Connection, actor: str, edits: list[Edit], expect_new: bool = False,
                 expect_existing: bool = False, op: str | None = None) -> list[dict]:
        """`write` inside the caller's transaction, which holds the draft lock."""
        current = self.load(connection)
        after = dict(current)
        for edit in edits:
            key = (edit.kind, edit.name)
            if expect_new and key in current:
                raise Conflict(f"{object_key(*key)} already exists; update it with PUT")
            if expect_existing and key not in current:
                raise NotFound(f"no {object_key(*key)}")
            if edit.instance is None:
                after.pop(key, None)
            else:
                after[key] = Stored.of(edit.kind, edit.name, edit.instance)
        self.check(after)
        keys = [key for key in dict.fromkeys((e.kind, e.name) for e in edits)
                if _hash(current.get(key)) != _hash(after.get(key))]
        changes = self.record(connection, actor, [(key, current.get(key), after.get(key)) for key in keys], op)
        with self.cache_lock:  # what the next load finds (kept only while the stored hash matches)
            for key in keys:
                if key in after:
                    self.cache[key] = after[key]
                else:
                    self.cache.pop(key, None)
        return changes

    def check(self, objects: dict[tuple[str, str], Stored]) -> Config:
        """The whole draft as one `Config`: cross-object references, names, domains."""
        fields: dict[str, Any] = {}
        order: dict[str, list[str]] = {}
        for (kind, name), stored in sorted(objects.items()):
            if KINDS[kind].singleton:
                fields[kind] = stored.instance
            else:
                fields.setdefault(kind, []).append(stored.instance)
                order.setdefault(kind, []).append(name)
        for kind in KINDS:  # an empty list, not the model's default (a draft without partitions has none)
            if not KINDS[kind].singleton:
                fields.setdefault(kind, [])
        try:
            return Config(**fields)
        except ValidationError as error:
            problems = problems_of(error.errors(include_url=False))
            raise Invalid([Problem(_named(p.path, order), p.message) for p in problems]) from None

    def record(self, connection: Connection, actor: str,
               edits: list[tuple[tuple[str, str], Stored | None, Stored | None]], op: str | None = None) -> list[dict]:
        """Record one change per (key, before, after) and write the objects: a statement per
        kind of write, however many objects (10,000 applications are a few statements)."""
        now = time.time()
        changes = [self.change(actor, now, key, before, after, op) for key, before, after in edits]
        if not changes:
            return []
        table = schema.changes
        ids = connection.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True),
                                 changes).scalars().all()
        writes: dict[str, list[dict]] = {"insert": [], "update": [], "delete": []}
        for change_id, change, (_key, before, after) in zip(ids, changes, edits, strict=True):
            change["id"] = change_id
            row = {"k": change["kind"], "n": change["name"]}
            if after is not None:
                row |= {"data": change["after"], "hash": after.hash, "change_id": change_id}
            writes["delete" if after is None else "insert" if before is None else "update"].append(row)
        objects = schema.objects
        where = (objects.c.kind == bindparam("k")) & (objects.c.name == bindparam("n"))
        if writes["insert"]:
            connection.execute(objects.insert().values(kind=bindparam("k"), name=bindparam("n")), writes["insert"])
        if writes["update"]:
            connection.execute(objects.update().where(where), writes["update"])
        if writes["delete"]:
            connection.execute(objects.delete().where(where), writes["delete"])
        return changes

    def change(self, actor: str, at: float, key: tuple[str, str], before: Stored | None, after: Stored | None,
               op: str | None) -> dict:
        """The change record of one object (its id comes from the store)."""
        kind, name = key
        scope = KINDS[kind]
        touched = [set(s.instance.partitions) if scope.partitioned else None for s in (before, after) if s is not None]
        partitions = None if any(t is None for t in touched) else sorted(set().union(*touched))
        op = op or ("create" if before is None else "delete" if after is None else "update")
        return {
            "at": at, "actor": actor, "kind": kind, "name": name, "op": op,
            "before": self.seal(kind, before.data) if before else None,
            "after": self.seal(kind, after.data) if after else None,
            "partitions": orjson.dumps(partitions).decode() if partitions is not None else None,
            "discarded": op in RESTORING or op == CONTROLLED,
        }


def _hash(stored: Stored | None) -> str | None:
    return stored.hash if stored is not None else None


def _named(path: str, order: dict[str, list[str]]) -> str:
    """applications[3].rules[0] → applications/web.rules[0]: list positions of a draft mean nothing to its user."""
    match = _INDEXED.match(path)
    if not match or match.group(1) not in order:
        return path
    names = order[match.group(1)]
    index = int(match.group(2))
    if index >= len(names):
        return path
    return f"{match.group(1)}/{names[index]}{path[match.end():]}"
