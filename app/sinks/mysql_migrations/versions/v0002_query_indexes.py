"""0002: indexes for the usual queries, each ending in last_seen so "the latest first" reads the
index in order: a namespace's events, a reason's (OOMKilling everywhere), one object's history,
and everything recent."""

from __future__ import annotations

from alembic import op

from app.sinks.mysql_migrations import table_name

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = {
    "namespace_last_seen": ["namespace", "last_seen"],
    "reason_last_seen": ["reason", "last_seen"],
    "involved": ["involved_kind", "involved_namespace", "involved_name", "last_seen"],
    "last_seen": ["last_seen"],
}


def upgrade() -> None:
    table = table_name()
    for name, columns in INDEXES.items():
        op.create_index(f"ix_{table}_{name}", table, columns)


def downgrade() -> None:
    table = table_name()
    for name in INDEXES:
        op.drop_index(f"ix_{table}_{name}", table_name=table)
