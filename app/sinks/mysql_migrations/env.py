"""Alembic's environment for the MySQL sink: online only, on the connection migrate() opened."""

from __future__ import annotations

from alembic import context

from app.sinks.mysql_migrations import table_name

if context.is_offline_mode():
    raise RuntimeError("the MySQL sink's migrations run online only, from MySQLSink.start()")

context.configure(
    connection=context.config.attributes["connection"],
    version_table=f"{table_name()}_alembic_version",
    # MySQL commits DDL implicitly; a transaction per revision records each one as it lands, so
    # an interrupted upgrade resumes at the first revision not done.
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
