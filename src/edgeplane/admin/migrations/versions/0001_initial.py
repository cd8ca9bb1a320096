"""The first schema: draft objects, changes, blobs, releases, reviews, nodes, users and roles."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False))
    op.bulk_insert(sa.table("counters", sa.column("name"), sa.column("value")),
                   [{"name": "release", "value": 0}, {"name": "draft", "value": 0}])
    op.create_table(
        "objects",
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("change_id", sa.Integer, nullable=False))
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("before", sa.Text),
        sa.Column("after", sa.Text),
        sa.Column("partitions", sa.Text),
        sa.Column("discarded", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "blobs",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("data", sa.Text, nullable=False))
    op.create_table(
        "releases",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("partition", sa.String(128), nullable=False, index=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("approved_by", sa.String(128)),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("change_id", sa.Integer, nullable=False),
        sa.Column("rollback_of", sa.Integer))
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("partition", sa.String(128), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("change_id", sa.Integer, nullable=False),
        sa.Column("rollback_of", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(128)),
        sa.Column("decided_at", sa.Float),
        sa.Column("release", sa.Integer))
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("cluster", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("joined_at", sa.Float, nullable=False),
        sa.Column("last_contact", sa.Float),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("report", sa.Text, nullable=False, server_default="{}"),
        sa.Column("address", sa.String(128), nullable=False, server_default=""))
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("cluster", sa.String(128), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("at", sa.Float, nullable=False))
    op.create_table(
        "users",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("at", sa.Float, nullable=False))
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(128), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(128), nullable=False, server_default=""),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("expires", sa.Float))
    op.create_table("groups", sa.Column("name", sa.String(128), primary_key=True))
    op.create_table(
        "group_members",
        sa.Column("group", sa.String(128), sa.ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("user", sa.String(128), sa.ForeignKey("users.name", ondelete="CASCADE"), primary_key=True))
    op.create_table(
        "role_bindings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(160), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(160), nullable=False),
        sa.UniqueConstraint("subject", "role", "scope"))
