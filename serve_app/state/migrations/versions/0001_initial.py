"""The first schema of the state store: release history and audit (as the SQLite history had them, with the
columns added since), API keys, change counters, shared rate-limit buckets.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("changed", sa.Text, nullable=False),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("outcome", sa.Text),
        sa.Column("rolled_back_to", sa.Integer),
        sa.Column("schema_version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("scope", sa.String(160), nullable=False, server_default="app"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("allowed", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("audit_at", "audit", ["at"])
    op.create_table(
        "api_keys",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("models", sa.Text),
        sa.Column("requests_per_minute", sa.Float),
        sa.Column("tokens_per_minute", sa.Float),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    counters = op.create_table(
        "state_versions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.bulk_insert(counters, [{"name": "keys", "n": 0}])
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("level", sa.Float, nullable=False),
        sa.Column("stamp", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("rate_buckets", "state_versions", "api_keys", "audit", "releases"):
        op.drop_table(table)
