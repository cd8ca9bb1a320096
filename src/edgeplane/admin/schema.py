"""The admin store's tables (SQLAlchemy Core). The migrations in `migrations/` create them.

Objects hold the draft: each object's JSON (secret fields sealed) and the hash of its plain
canonical form. Releases are manifests (kind → name → hash) over immutable blobs, so a
release of 10,000 applications that changes one stores one blob. Version numbers come
from the `counters` row updated inside the release transaction.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

counters = Table(
    "counters", metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)

objects = Table(
    "objects", metadata,
    Column("kind", String(64), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("data", Text, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("change_id", Integer, nullable=False),
)

changes = Table(
    "changes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("op", String(16), nullable=False),
    Column("before", Text),
    Column("after", Text),
    Column("partitions", Text),  # JSON list of the partitions it touches; NULL: every partition
    Column("discarded", Boolean, nullable=False, default=False),
)

blobs = Table(
    "blobs", metadata,
    Column("hash", String(64), primary_key=True),
    Column("data", Text, nullable=False),
)

releases = Table(
    "releases", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("partition", String(128), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("approved_by", String(128)),
    Column("note", Text, nullable=False, default=""),
    Column("manifest", Text, nullable=False),
    Column("change_id", Integer, nullable=False),
    Column("rollback_of", Integer),
)

reviews = Table(
    "reviews", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("partition", String(128), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("at", Float, nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("manifest", Text, nullable=False),
    Column("change_id", Integer, nullable=False),
    Column("rollback_of", Integer),
    Column("state", String(16), nullable=False),  # open, released, rejected
    Column("decided_by", String(128)),
    Column("decided_at", Float),
    Column("release", Integer),
)

nodes = Table(
    "nodes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("cluster", String(128), nullable=False),
    Column("state", String(16), nullable=False),  # candidate, approved, offline
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("joined_at", Float, nullable=False),
    Column("last_contact", Float),
    Column("version", Integer, nullable=False, default=0),
    Column("report", Text, nullable=False, default="{}"),
    Column("address", String(128), nullable=False, default=""),
)

join_tokens = Table(
    "join_tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cluster", String(128), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("created_by", String(128), nullable=False),
    Column("at", Float, nullable=False),
)

users = Table(
    "users", metadata,
    Column("name", String(128), primary_key=True),
    Column("password_hash", Text, nullable=False),
    Column("at", Float, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user", String(128), ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("label", String(128), nullable=False, default=""),
    Column("at", Float, nullable=False),
    Column("expires", Float),
)

groups = Table(
    "groups", metadata,
    Column("name", String(128), primary_key=True),
)

group_members = Table(
    "group_members", metadata,
    Column("group", String(128), ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True),
    Column("user", String(128), ForeignKey("users.name", ondelete="CASCADE"), primary_key=True),
)

role_bindings = Table(
    "role_bindings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subject", String(160), nullable=False),  # user:NAME or group:NAME
    Column("role", String(16), nullable=False),
    Column("scope", String(160), nullable=False),  # *, partition:NAME or application:NAME
    UniqueConstraint("subject", "role", "scope"),
)

# Automated canaries (admin/canary.py): each canary's run, the decisions taken on it, and
# the traffic figures nodes report (admin/traffic.py). Not drafted, not released.
canary_runs = Table(
    "canary_runs", metadata,
    Column("name", String(128), primary_key=True),
    Column("partition", String(128), nullable=False),
    Column("run", Integer, nullable=False),  # 1, 2, ...: a new run for each released spec (or restart)
    Column("spec_hash", String(64), nullable=False),  # the released spec this run follows
    Column("phase", String(16), nullable=False),  # progressing, paused, promoted, rolled_back, aborted
    Column("weight", Integer, nullable=False),  # percent released to the canary (0 when none is)
    Column("failed_checks", Integer, nullable=False),
    Column("step_started_at", Float, nullable=False),  # the window of the next check starts here
    Column("next_check_at", Float, nullable=False),
    Column("release", Integer),  # the last release made for this canary
    Column("revision", Integer, nullable=False),  # bumped by every decision: a stale one is dropped
    Column("leader", String(128)),  # the admin that drives it ...
    Column("lease_until", Float),  # ... until then, unless it renews
    Column("updated_at", Float, nullable=False),
)

canary_decisions = Table(
    "canary_decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("canary", String(128), nullable=False, index=True),
    Column("run", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),  # `controller` or the operator's name
    Column("admin", String(128), nullable=False),  # the admin that took it
    Column("action", String(16), nullable=False),
    Column("phase", String(16), nullable=False),  # after the decision
    Column("weight_from", Integer, nullable=False),
    Column("weight_to", Integer, nullable=False),
    Column("release", Integer),
    Column("reasons", Text, nullable=False),  # JSON list of sentences
    Column("figures", Text, nullable=False),  # JSON: window, canary, stable, thresholds, nodes
)

traffic_reports = Table(
    "traffic_reports", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(128), nullable=False),
    Column("partition", String(128), nullable=False),
    Column("at", Float, nullable=False, index=True),  # the admin's clock when it arrived
    Column("seconds", Float, nullable=False),  # the time it covers, ending `at`
    Column("upstreams", Text, nullable=False),  # JSON: upstream → requests, failures, buckets_ms
)
