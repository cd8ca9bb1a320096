"""Nodes: joining with a cluster's join token, approval, and what they are sent and report.

A node joins as a candidate (or approved at once when its cluster auto-approves), then
long-polls `sync` with the release it has: it gets the changes from that release to its
partition's latest (a delta of objects), everything when the release it has is unknown
there, or, when it is current, an answer only once a new release exists or the wait ends.
Each poll is also the node's report (the version it runs, its last error, room for
metrics) and its last contact. Offline nodes keep what they run and get no new release.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from ..model.kinds import KINDS
from . import schema
from .auth import new_secret, secret_hash
from .draft import Conflict, NotFound
from .releases import Releases, manifest_changes

DELTAS_KEPT = 32  # sync answers kept: the nodes of a partition mostly ask for the same one
STALE_AFTER = 90.0  # seconds without contact after which a node counts as unreachable
STATES = ("candidate", "approved", "offline")


class Nodes:
    def __init__(self, releases: Releases):
        self.releases = releases
        self.store = releases.store
        self.draft = releases.draft
        self.deltas: dict[tuple[str, int, int], bytes] = {}
        self.deltas_lock = threading.Lock()

    def cluster_partition(self, connection: Connection, cluster: str) -> tuple[str, bool]:
        stored = self.draft.one(connection, "clusters", cluster)
        if stored is None:
            raise NotFound(f"no cluster named {cluster!r}")
        return stored.instance.partition, stored.instance.auto_approve

    # --- join tokens -------------------------------------------------------------------

    def create_join_token(self, actor: str, cluster: str) -> dict:
        token = new_secret()
        with self.store.transaction() as connection:
            self.cluster_partition(connection, cluster)
            token_id = connection.execute(schema.join_tokens.insert().values(
                cluster=cluster, hash=secret_hash(token), created_by=actor, at=time.time())).inserted_primary_key[0]
        return {"id": token_id, "cluster": cluster, "token": token}

    def join_tokens(self) -> list[dict]:
        table = schema.join_tokens
        with self.store.reading() as connection:
            rows = connection.execute(select(table.c.id, table.c.cluster, table.c.created_by, table.c.at)).all()
        return [dict(r._mapping) for r in rows]

    def delete_join_token(self, token_id: int) -> None:
        with self.store.transaction() as connection:
            if not connection.execute(schema.join_tokens.delete().where(schema.join_tokens.c.id == token_id)).rowcount:
                raise NotFound(f"no join token {token_id}")

    # --- joining and state -------------------------------------------------------------

    def join(self, token: str, name: str, address: str) -> dict:
        secret = new_secret()
        with self.store.transaction() as connection:
            row = connection.execute(select(schema.join_tokens).where(
                schema.join_tokens.c.hash == secret_hash(token))).first()
            if row is None:
                raise PermissionError("unknown join token; create one with `edgeplane join-token CLUSTER`")
            partition, auto = self.cluster_partition(connection, row.cluster)
            if connection.execute(select(schema.nodes.c.id).where(schema.nodes.c.name == name)).first():
                raise Conflict(f"a node named {name!r} already joined; remove it first or join with another --name")
            state = "approved" if auto else "candidate"
            node_id = connection.execute(schema.nodes.insert().values(
                name=name, cluster=row.cluster, state=state, secret_hash=secret_hash(secret), joined_at=time.time(),
                version=0, report="{}", address=address)).inserted_primary_key[0]
        return {"id": node_id, "name": name, "cluster": row.cluster, "partition": partition, "state": state,
                "secret": secret}

    def by_secret(self, secret: str) -> Any:
        with self.store.reading() as connection:
            row = connection.execute(select(schema.nodes).where(schema.nodes.c.secret_hash == secret_hash(secret))).first()
        if row is None:
            raise PermissionError("unknown node credential: the node was removed; join it again")
        return row

    def node(self, connection: Connection, node: str) -> Any:
        table = schema.nodes
        where = table.c.id == int(node) if node.isdigit() else table.c.name == node
        row = connection.execute(select(table).where(where)).first()
        if row is None:
            raise NotFound(f"no node {node!r}")
        return row

    def partition_of(self, node: str) -> str:
        with self.store.reading() as connection:
            return self.cluster_partition(connection, self.node(connection, node).cluster)[0]

    def set_state(self, node: str, state: str) -> dict:
        with self.store.transaction() as connection:
            row = self.node(connection, node)
            connection.execute(schema.nodes.update().where(schema.nodes.c.id == row.id).values(state=state))
        return self.listing(node)[0]

    def remove(self, node: str) -> None:
        with self.store.transaction() as connection:
            row = self.node(connection, node)
            connection.execute(schema.nodes.delete().where(schema.nodes.c.id == row.id))

    # --- sync --------------------------------------------------------------------------

    def report(self, node_id: int, running: int, report: dict, address: str) -> None:
        with self.store.transaction() as connection:
            connection.execute(schema.nodes.update().where(schema.nodes.c.id == node_id).values(
                last_contact=time.time(), version=running, report=orjson.dumps(report).decode(), address=address))

    def target(self, node_id: int) -> tuple[str, str, int]:
        """(state, partition, latest release of the partition or 0) of a node."""
        with self.store.reading() as connection:
            row = connection.execute(select(schema.nodes).where(schema.nodes.c.id == node_id)).first()
            if row is None:
                raise PermissionError("this node was removed; join it again")
            partition = self.cluster_partition(connection, row.cluster)[0]
            latest = self.releases.latest(connection, partition)
        return row.state, partition, latest.version if latest is not None else 0

    def delta(self, partition: str, have: int, version: int) -> bytes:
        """What takes a node from release `have` to release `version` of `partition`, as
        JSON; releases never change, so the answer is kept for the next node that asks."""
        key = (partition, have, version)
        cached = self.deltas.get(key)
        if cached is None:
            cached = self.compute_delta(partition, have, version)
            with self.deltas_lock:
                self.deltas[key] = cached
                while len(self.deltas) > DELTAS_KEPT:
                    del self.deltas[next(iter(self.deltas))]
        return cached

    def compute_delta(self, partition: str, have: int, version: int) -> bytes:
        """The objects' stored JSON is spliced into the answer as it is (opened first where
        it holds secrets): a full release of 10,000 applications is not parsed and dumped again."""
        with self.store.reading() as connection:
            new = orjson.loads(self.releases.get(connection, version).manifest)
            old_row = connection.execute(select(schema.releases).where(schema.releases.c.version == have)).first()
            full = old_row is None or old_row.partition != partition
            changed, removed = manifest_changes({} if full else orjson.loads(old_row.manifest), new)
            texts = self.releases.blob_texts(connection, list({new[k][n] for k, n in changed}))
        objects = [b'{"kind":%s,"name":%s,"data":%s}' % (orjson.dumps(k), orjson.dumps(n), self.plain(k, texts[new[k][n]]))
                   for k, n in changed]
        head = orjson.dumps({"state": "approved", "partition": partition, "version": version, "full": full,
                             "deleted": [[k, n] for k, n in removed]})
        return head[:-1] + b',"objects":[' + b",".join(objects) + b"]}"

    def plain(self, kind: str, text: str) -> bytes:
        """An object's stored JSON with its secrets opened (what nodes get)."""
        paths = KINDS[kind].secret_paths
        if not paths:
            return text.encode()
        return orjson.dumps(self.draft.box.open(orjson.loads(text), paths))

    # --- status ------------------------------------------------------------------------

    def listing(self, node: str | None = None) -> list[dict]:
        with self.store.reading() as connection:
            rows = [self.node(connection, node)] if node else connection.execute(
                select(schema.nodes).order_by(schema.nodes.c.id)).all()
            clusters = {k[1]: s.instance.partition for k, s in self.draft.load(connection).items() if k[0] == "clusters"}
            latest = dict(connection.execute(select(schema.releases.c.partition, func.max(schema.releases.c.version))
                                             .group_by(schema.releases.c.partition)).all())
            versions = connection.execute(select(schema.releases.c.partition, schema.releases.c.version)).all()
        now = time.time()
        out = []
        for row in rows:
            partition = clusters.get(row.cluster)
            newest = latest.get(partition, 0)
            behind = sum(1 for p, v in versions if p == partition and v > row.version)
            contact = now - row.last_contact if row.last_contact else None
            out.append({
                "id": row.id, "name": row.name, "cluster": row.cluster, "partition": partition, "state": row.state,
                "address": row.address, "version": row.version, "latest": newest, "lag": behind,
                "in_sync": row.version == newest, "last_contact": row.last_contact,
                "last_contact_age_s": round(contact, 1) if contact is not None else None,
                "reachable": contact is not None and contact < STALE_AFTER,
                "joined_at": row.joined_at, "report": orjson.loads(row.report)})
        return out

    def status(self) -> dict:
        nodes = self.listing()
        releases = self.releases.listing(limit=1000)
        partitions: dict[str, dict] = {}
        for release in releases:
            entry = partitions.setdefault(release["partition"], {"latest": release["version"], "releases": []})
            running = [n for n in nodes if n["partition"] == release["partition"] and n["state"] == "approved"
                       and n["version"] == release["version"]]
            if running or release["version"] == entry["latest"] or len(entry["releases"]) < 5:
                entry["releases"].append({**release, "nodes": len(running)})
        return {"partitions": partitions, "nodes": nodes}
