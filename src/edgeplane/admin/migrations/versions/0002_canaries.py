"""Automated canaries: their runs and decisions, and the traffic figures nodes report."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "canary_runs",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("partition", sa.String(128), nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("failed_checks", sa.Integer, nullable=False),
        sa.Column("step_started_at", sa.Float, nullable=False),
        sa.Column("next_check_at", sa.Float, nullable=False),
        sa.Column("release", sa.Integer),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("leader", sa.String(128)),
        sa.Column("lease_until", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False))
    op.create_table(
        "canary_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("canary", sa.String(128), nullable=False, index=True),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("admin", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("weight_from", sa.Integer, nullable=False),
        sa.Column("weight_to", sa.Integer, nullable=False),
        sa.Column("release", sa.Integer),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("figures", sa.Text, nullable=False))
    op.create_table(
        "traffic_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("partition", sa.String(128), nullable=False),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("upstreams", sa.Text, nullable=False))
