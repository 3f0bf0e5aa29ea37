"""0001: the k8s_events table, one row per event uid.

utf8mb4 declared on the table (MariaDB's compiled default is latin1), binary collation: Kubernetes
names are case-sensitive and uid must be unique byte for byte. message is MEDIUMTEXT: TEXT holds
64 KB, which a 30 000-character message of 4-byte characters exceeds. DATETIME(6) in naive UTC.
guard_version is NOT NULL: GREATEST() with a NULL is NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from app.sinks.mysql_migrations import table_name

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = table_name()
    op.create_table(
        table,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("cluster", sa.String(253), nullable=False),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("api_version", sa.String(32), nullable=False),
        sa.Column("involved_kind", sa.String(128), nullable=False),
        sa.Column("involved_namespace", sa.String(253), nullable=False),
        sa.Column("involved_name", sa.String(253), nullable=False),
        sa.Column("involved_uid", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("message", mysql.MEDIUMTEXT, nullable=False),
        sa.Column("reporting_component", sa.String(255), nullable=False),
        sa.Column("reporting_instance", sa.String(255), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen", mysql.DATETIME(fsp=6), nullable=False),
        sa.Column("last_seen", mysql.DATETIME(fsp=6), nullable=False),
        sa.Column("observed_at", mysql.DATETIME(fsp=6), nullable=True),
        sa.Column("resource_version", sa.String(255), nullable=False),
        sa.Column("guard_version", sa.BigInteger, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("owners", sa.JSON, nullable=False),
        sa.Column("root_owner_kind", sa.String(128), nullable=True),
        sa.Column("root_owner_name", sa.String(253), nullable=True),
        sa.UniqueConstraint("uid", name=f"uq_{table}_uid"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table(table_name())
