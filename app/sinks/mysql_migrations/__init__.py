"""Alembic migrations of the MySQL sink's table, run by app.sinks.mysql.migrate() from start().

There is no alembic.ini: ``migrate`` hands env.py the connection and the table name (the table is
configurable, so revisions read its name from ``table_name()``). A new revision is a new file in
versions/ (copy the last one; ``down_revision`` names it): revisions are history, so they spell out
their own DDL and never import the runtime table (app/sinks/mysql_rows.py).
"""

from __future__ import annotations

from alembic import context


def table_name() -> str:
    """The table being migrated (``MySQLSinkSettings.table``)."""
    return str(context.config.attributes["table"])
