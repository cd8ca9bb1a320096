"""Releases: numbered, immutable snapshots of one partition, their diffs, rollback, review.

A release's manifest maps kind → name → hash of every object the partition's nodes get
(its applications, and the shared kinds); the objects themselves are blobs stored once.
A release takes its number from the `release` counter in the same transaction that
stores it, so several admins on one database never fork a number, and a killed admin
leaves no half release. Rollback and discard put the draft back to a release's objects
(recorded as changes) in that transaction too. With review on, a release request waits
for a different user's approval; approving releases exactly what was requested.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import yaml
from sqlalchemy import Connection, func, select

from ..model.kinds import KINDS, object_key
from . import schema
from .draft import CONTROLLED, RESTORING, Conflict, Draft, Edit, NotFound, Stored
from .secrets import redact

Manifest = dict[str, dict[str, str]]  # kind → name → hash
PAUSE_ENV = "EDGEPLANE_FAULT_RELEASE_PAUSE"  # tests: seconds to stall inside the release transaction


class ReviewRequired(Exception):
    def __init__(self, review: dict):
        self.review = review
        super().__init__(f"partition {review['partition']!r} requires review: release request "
                         f"{review['id']} waits for approval by another user with release permission")


def in_partition(stored: Stored, partition: str) -> bool:
    return not KINDS[stored.kind].partitioned or partition in stored.instance.partitions


def manifest_of(objects: dict[tuple[str, str], Stored], partition: str) -> Manifest:
    manifest: Manifest = {}
    for (kind, name), stored in sorted(objects.items()):
        if in_partition(stored, partition):
            manifest.setdefault(kind, {})[name] = stored.hash
    return manifest


def manifest_changes(old: Manifest, new: Manifest) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(objects added or changed, objects removed) from `old` to `new`."""
    changed, removed = [], []
    for kind in dict.fromkeys([*old, *new]):
        before, after = old.get(kind, {}), new.get(kind, {})
        changed += [(kind, name) for name, digest in after.items() if before.get(name) != digest]
        removed += [(kind, name) for name in before if name not in after]
    return changed, removed


class Releases:
    def __init__(self, draft: Draft, on_release: Callable[[str, int], None] = lambda _p, _v: None):
        self.draft = draft
        self.store = draft.store
        self.on_release = on_release

    # --- reading -----------------------------------------------------------------------

    def latest(self, connection: Connection, partition: str) -> Any:
        table = schema.releases
        return connection.execute(select(table).where(table.c.partition == partition)
                                  .order_by(table.c.version.desc()).limit(1)).first()

    def get(self, connection: Connection, version: int) -> Any:
        row = connection.execute(select(schema.releases).where(schema.releases.c.version == version)).first()
        if row is None:
            raise NotFound(f"no release {version}")
        return row

    def listing(self, partition: str | None = None, limit: int = 50, offset: int = 0) -> list[dict]:
        table = schema.releases
        query = select(table.c.version, table.c.partition, table.c.at, table.c.actor, table.c.approved_by,
                       table.c.note, table.c.rollback_of, table.c.change_id)
        if partition:
            query = query.where(table.c.partition == partition)
        with self.store.reading() as connection:
            rows = connection.execute(query.order_by(table.c.version.desc()).limit(limit).offset(offset)).all()
        return [dict(r._mapping) for r in rows]

    def blobs(self, connection: Connection, hashes: list[str]) -> dict[str, dict]:
        """Objects by hash, as stored (secrets sealed)."""
        return {digest: orjson.loads(text) for digest, text in self.blob_texts(connection, hashes).items()}

    def blob_texts(self, connection: Connection, hashes: list[str]) -> dict[str, str]:
        """The stored JSON of objects by hash (secrets sealed)."""
        found: dict[str, str] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            for row in connection.execute(select(schema.blobs).where(schema.blobs.c.hash.in_(chunk))):
                found[row.hash] = row.data
        return found

    def objects_of(self, connection: Connection, manifest: Manifest, keys: list[tuple[str, str]] | None = None
                   ) -> dict[tuple[str, str], dict]:
        keys = keys if keys is not None else [(k, n) for k, names in manifest.items() for n in names]
        data = self.blobs(connection, list({manifest[k][n] for k, n in keys}))
        return {(k, n): self.draft.box.open(data[manifest[k][n]], KINDS[k].secret_paths) for k, n in keys}

    def snapshot(self, version: int) -> dict:
        """The release as one config document (secrets redacted)."""
        with self.store.reading() as connection:
            row = self.get(connection, version)
            objects = self.objects_of(connection, orjson.loads(row.manifest))
        return {"version": version, "partition": row.partition, "config": config_document(objects, redacted=True)}

    # --- diff --------------------------------------------------------------------------

    def diff(self, old: int | None, new: int | None, partition: str | None = None) -> dict:
        """Object changes from release `old` to release `new`; None for `new` means the draft
        of `partition` (what the next release would be), None for `old` an empty partition."""
        with self.store.reading() as connection:
            new_row = self.get(connection, new) if new is not None else None
            partition = partition or (new_row.partition if new_row is not None else None)
            if old is None and new is None:
                latest = self.latest(connection, partition)
                old = latest.version if latest is not None else None
            old_manifest = orjson.loads(self.get(connection, old).manifest) if old is not None else {}
            if new_row is not None:
                new_manifest = orjson.loads(new_row.manifest)
                new_objects = self.objects_of(connection, new_manifest)
            else:
                objects = self.draft.load(connection)
                new_manifest = manifest_of(objects, partition)
                new_objects = {k: orjson.loads(s.data) for k, s in objects.items() if k[1] in new_manifest.get(k[0], {})}
            changed, removed = manifest_changes(old_manifest, new_manifest)
            old_objects = self.objects_of(connection, old_manifest, [k for k in changed + removed
                                                                     if k[1] in old_manifest.get(k[0], {})])
        items = []
        for key in changed + removed:
            before, after = old_objects.get(key), new_objects.get(key)
            paths = KINDS[key[0]].secret_paths
            items.append({"kind": key[0], "name": key[1],
                          "op": "create" if before is None else "delete" if after is None else "update",
                          "before": redact(before, paths) if before is not None else None,
                          "after": redact(after, paths) if after is not None else None})
        return {"partition": partition, "from": old, "to": new if new is not None else "draft", "changes": items}

    # --- releasing ---------------------------------------------------------------------

    def release(self, actor: str, partition: str, note: str = "", review: bool | None = None) -> dict:
        """Release the draft of `partition`; with review on, open a release request instead."""
        return self._publish(actor, partition, note, None, review)

    def rollback(self, actor: str, partition: str, version: int, note: str = "") -> dict:
        """A new release equal to release `version`; the draft is put back to it as well."""
        return self._publish(actor, partition, note or f"rollback to {version}", version, None)

    def _publish(self, actor: str, partition: str, note: str, rollback_of: int | None, review: bool | None) -> dict:
        with self.store.transaction() as connection:
            self.store.lock(connection, "draft")
            objects = self.draft.load(connection)
            if ("partitions", partition) not in objects:
                raise NotFound(f"no partition named {partition!r}")
            if rollback_of is not None:
                target = self.get(connection, rollback_of)
                if target.partition != partition:
                    raise Conflict(f"release {rollback_of} is of partition {target.partition!r}, not {partition!r}")
                manifest = orjson.loads(target.manifest)
            else:
                manifest = manifest_of(objects, partition)
                self.keep_blobs(connection, objects, manifest)
            change_id = connection.execute(select(func.coalesce(func.max(schema.changes.c.id), 0))).scalar_one()
            needs_review = objects[("partitions", partition)].instance.review if review is None else review
            if needs_review:
                values = {"partition": partition, "requested_by": actor, "at": time.time(), "note": note,
                          "manifest": orjson.dumps(manifest).decode(), "change_id": change_id,
                          "rollback_of": rollback_of, "state": "open"}
                review_id = connection.execute(schema.reviews.insert().values(**values)).inserted_primary_key[0]
                raise_later = ReviewRequired({"id": review_id, **{k: v for k, v in values.items() if k != "manifest"}})
            else:
                release = self._store_release(connection, actor, partition, note, manifest, change_id, rollback_of, None)
                raise_later = None
        if raise_later is not None:
            raise raise_later
        self.on_release(partition, release["version"])
        return release

    def _store_release(self, connection: Connection, actor: str, partition: str, note: str, manifest: Manifest,
                       change_id: int, rollback_of: int | None, approved_by: str | None) -> dict:
        if rollback_of is not None:
            self.restore_draft(connection, actor, partition, manifest, "rollback")
        version = self.store.bump(connection, "release")
        if os.environ.get(PAUSE_ENV):
            print(f"edgeplane admin: release_paused version={version} ({PAUSE_ENV})", file=sys.stderr, flush=True)
            time.sleep(float(os.environ[PAUSE_ENV]))
        values = {"version": version, "partition": partition, "at": time.time(), "actor": actor,
                  "approved_by": approved_by, "note": note, "manifest": orjson.dumps(manifest).decode(),
                  "change_id": change_id, "rollback_of": rollback_of}
        connection.execute(schema.releases.insert().values(**values))
        return {k: v for k, v in values.items() if k != "manifest"} | {"objects": sum(map(len, manifest.values()))}

    def release_controlled(self, connection: Connection, actor: str, partition: str, note: str,
                           edits: list[Edit]) -> dict:
        """A release that is the partition's latest release plus `edits` (objects of a
        controlled kind, such as canary_weights) and nothing else: pending changes stay
        pending. The edits go to the draft too, recorded as never-pending changes, so draft
        and releases always agree on controlled objects. No review: what a controller may
        change was itself released (and reviewed). Runs in the caller's transaction, which
        holds the draft lock; the caller calls `on_release` once it has committed."""
        latest = self.latest(connection, partition)
        manifest: Manifest = orjson.loads(latest.manifest) if latest is not None else {}
        self.draft.write_in(connection, actor, edits, op=CONTROLLED)
        objects = self.draft.load(connection)
        for edit in edits:
            names = manifest.setdefault(edit.kind, {})
            if edit.instance is None:
                names.pop(edit.name, None)
            else:
                names[edit.name] = objects[(edit.kind, edit.name)].hash
        manifest = {kind: dict(sorted(names.items())) for kind, names in sorted(manifest.items()) if names}
        self.keep_blobs(connection, {(e.kind, e.name): objects[(e.kind, e.name)] for e in edits
                                     if e.instance is not None}, manifest)
        change_id = latest.change_id if latest is not None else 0  # the draft's own changes are not in it
        return self._store_release(connection, actor, partition, note, manifest, change_id, None, None)

    def keep_blobs(self, connection: Connection, objects: dict[tuple[str, str], Stored], manifest: Manifest) -> None:
        wanted = {stored.hash: stored for key, stored in objects.items() if key[1] in manifest.get(key[0], {})}
        hashes = list(wanted)
        known: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            known.update(connection.execute(select(schema.blobs.c.hash).where(schema.blobs.c.hash.in_(chunk))).scalars())
        rows = [{"hash": h, "data": self.draft.seal(s.kind, s.data)} for h, s in wanted.items() if h not in known]
        if rows:
            connection.execute(schema.blobs.insert(), rows)

    def restore_draft(self, connection: Connection, actor: str, partition: str, manifest: Manifest, op: str) -> list:
        """Put the draft of `partition` back to `manifest`: its objects as released; an object
        bound to the partition since is unbound from it (deleted when it was its only one)."""
        objects = self.draft.load(connection)
        current = manifest_of(objects, partition)
        changed, removed = manifest_changes(current, manifest)
        released = self.objects_of(connection, manifest, changed)
        edits = [Edit(kind, name, KINDS[kind].model.model_validate(released[(kind, name)])) for kind, name in changed]
        for kind, name in removed:
            data = orjson.loads(objects[(kind, name)].data)
            others = [p for p in KINDS[kind].partitions_of(data) or () if p != partition]
            edits.append(Edit(kind, name, KINDS[kind].model.model_validate({**data, "partitions": others})
                              if others else None))
        return self.draft.write_in(connection, actor, edits, op=op)

    def discard(self, actor: str, partition: str) -> dict:
        """Drop the pending changes of `partition`: the draft goes back to its latest release."""
        with self.store.transaction() as connection:
            self.store.lock(connection, "draft")
            latest = self.latest(connection, partition)
            manifest = orjson.loads(latest.manifest) if latest is not None else {}
            pending = self.pending_changes(connection, partition)
            restored = self.restore_draft(connection, actor, partition, manifest, "discard")
            ids = [c["id"] for c in pending]
            for start in range(0, len(ids), 500):
                connection.execute(schema.changes.update().where(schema.changes.c.id.in_(ids[start:start + 500]))
                                   .values(discarded=True))
        return {"partition": partition, "discarded": len(pending), "restored": len(restored)}

    # --- pending changes ---------------------------------------------------------------

    def pending_changes(self, connection: Connection, partition: str) -> list[dict]:
        """The changes since the partition's latest release to objects its draft still has
        otherwise than that release, each object's since it was last put back (rollback,
        discard): a shared object rolled back or discarded in another partition is pending
        here only if it differs from what this one released."""
        latest = self.latest(connection, partition)
        since = latest.change_id if latest is not None else 0
        released: Manifest = orjson.loads(latest.manifest) if latest is not None else {}
        drafted = manifest_of(self.draft.load(connection), partition)
        table = schema.changes
        by_object: dict[tuple[str, str], list[Any]] = {}
        for row in connection.execute(select(table).where(table.c.id > since).order_by(table.c.id)):
            if row.op in RESTORING:
                by_object[(row.kind, row.name)] = []
            elif not row.discarded and (row.partitions is None or partition in orjson.loads(row.partitions)):
                by_object.setdefault((row.kind, row.name), []).append(row)
        rows = sorted((row for (kind, name), rows in by_object.items()
                       if drafted.get(kind, {}).get(name) != released.get(kind, {}).get(name) for row in rows),
                      key=lambda row: row.id)
        return [self.change_view(row) for row in rows]

    def change_view(self, row: Any) -> dict:
        paths = KINDS[row.kind].secret_paths if row.kind in KINDS else ()
        return {"id": row.id, "at": row.at, "actor": row.actor, "kind": row.kind, "name": row.name, "op": row.op,
                "before": redact(orjson.loads(row.before), paths) if row.before else None,
                "after": redact(orjson.loads(row.after), paths) if row.after else None,
                "partitions": orjson.loads(row.partitions) if row.partitions else None,
                "discarded": row.discarded}

    # --- review ------------------------------------------------------------------------

    def reviews(self, state: str | None = None) -> list[dict]:
        table = schema.reviews
        query = select(*[c for c in table.c if c.name != "manifest"]).order_by(table.c.id.desc())
        if state:
            query = query.where(table.c.state == state)
        with self.store.reading() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    def review(self, connection: Connection, review_id: int) -> Any:
        row = connection.execute(select(schema.reviews).where(schema.reviews.c.id == review_id)).first()
        if row is None:
            raise NotFound(f"no release request {review_id}")
        if row.state != "open":
            raise Conflict(f"release request {review_id} is already {row.state}")
        return row

    def approve(self, actor: str, review_id: int) -> dict:
        with self.store.transaction() as connection:
            self.store.lock(connection, "draft")
            row = self.review(connection, review_id)
            if row.requested_by == actor:
                raise SelfApproval(f"release request {review_id} was made by {actor!r}; "
                                   "it needs approval by a different user with release permission")
            release = self._store_release(connection, row.requested_by, row.partition, row.note,
                                          orjson.loads(row.manifest), row.change_id, row.rollback_of, actor)
            connection.execute(schema.reviews.update().where(schema.reviews.c.id == review_id).values(
                state="released", decided_by=actor, decided_at=time.time(), release=release["version"]))
        self.on_release(row.partition, release["version"])
        return release

    def reject(self, actor: str, review_id: int) -> dict:
        with self.store.transaction() as connection:
            self.review(connection, review_id)
            connection.execute(schema.reviews.update().where(schema.reviews.c.id == review_id).values(
                state="rejected", decided_by=actor, decided_at=time.time()))
        return {"id": review_id, "state": "rejected", "decided_by": actor}

    def review_partition(self, review_id: int) -> str:
        with self.store.reading() as connection:
            return self.review(connection, review_id).partition


class SelfApproval(Exception):
    pass


def config_document(objects: dict[tuple[str, str], dict], redacted: bool = False) -> dict:
    """Objects as one config document in Config's field order (what `edgeplane dump` prints)."""
    document: dict[str, Any] = {}
    for kind in KINDS:
        for (k, _name), data in sorted(objects.items()):
            if k != kind:
                continue
            data = redact(data, KINDS[k].secret_paths) if redacted else data
            if KINDS[k].singleton:
                document[kind] = data
            else:
                document.setdefault(kind, []).append(data)
    return document


def diff_text(diff: dict) -> str:
    """A unified diff of each changed object's YAML."""
    out = []
    for item in diff["changes"]:
        key = object_key(item["kind"], item["name"])
        lines = [_yaml_lines(item[side]) for side in ("before", "after")]
        out += difflib.unified_diff(lines[0], lines[1], f"{diff['from'] or 'empty'}/{key}", f"{diff['to']}/{key}")
    return "".join(out)


def _yaml_lines(data: dict | None) -> list[str]:
    if data is None:
        return []
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).splitlines(keepends=True)
