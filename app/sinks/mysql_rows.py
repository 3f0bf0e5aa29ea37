"""The MySQL sink's pure half: enriched events become rows of ``k8s_events``, a batch collapses to
the newest version per uid, and one upsert statement writes a chunk of rows without ever moving a
row backwards. No connection here: app/sinks/mysql.py runs the statement.

The guard: every row carries ``guard_version`` (BIGINT NOT NULL), the event's resourceVersion as
an integer (``numeric_version``). When the resourceVersion is not a number (or exceeds BIGINT), the
fallback is ``last_seen`` in microseconds since the epoch, which also rises as an event repeats.
The two scales are not comparable, but a cluster writes one kind of resourceVersion for all its
events and a uid lives in one cluster, so one row never meets both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, case, func
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import DATETIME, MEDIUMTEXT
from sqlalchemy.dialects.mysql.dml import Insert
from sqlalchemy.engine import Dialect

from app.model.timeutil import parse_time
from app.sinks.base import Event, numeric_version

Row = dict[str, Any]
T = TypeVar("T")

# Columns that follow the newest version of the event; ``first_seen`` keeps the earliest and
# ``guard_version`` the greatest, assigned last (see ``upsert``).
FOLLOW_NEWEST = (
    "cluster",
    "namespace",
    "name",
    "api_version",
    "involved_kind",
    "involved_namespace",
    "involved_name",
    "involved_uid",
    "type",
    "reason",
    "message",
    "reporting_component",
    "reporting_instance",
    "severity",
    "count",
    "last_seen",
    "observed_at",
    "resource_version",
    "labels",
    "owners",
    "root_owner_kind",
    "root_owner_name",
)
COLUMNS = ("uid", "first_seen", *FOLLOW_NEWEST, "guard_version")

_EPOCH = datetime(1970, 1, 1)


def events_table(name: str) -> Table:
    """The table as the upsert sees it (names and bind types). Its DDL lives in the migrations
    (app/sinks/mysql_migrations/versions), which are history and must not import this."""
    return Table(
        name,
        MetaData(),
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("uid", String(128), nullable=False, unique=True),
        Column("cluster", String(253), nullable=False),
        Column("namespace", String(253), nullable=False),
        Column("name", String(253), nullable=False),
        Column("api_version", String(32), nullable=False),
        Column("involved_kind", String(128), nullable=False),
        Column("involved_namespace", String(253), nullable=False),
        Column("involved_name", String(253), nullable=False),
        Column("involved_uid", String(128), nullable=False),
        Column("type", String(64), nullable=False),
        Column("reason", String(255), nullable=False),
        Column("message", MEDIUMTEXT, nullable=False),
        Column("reporting_component", String(255), nullable=False),
        Column("reporting_instance", String(255), nullable=False),
        Column("severity", String(16), nullable=False),
        Column("count", Integer, nullable=False),
        Column("first_seen", DATETIME(fsp=6), nullable=False),
        Column("last_seen", DATETIME(fsp=6), nullable=False),
        Column("observed_at", DATETIME(fsp=6), nullable=True),
        Column("resource_version", String(255), nullable=False),
        Column("guard_version", BigInteger, nullable=False),
        # JSON columns on the server; serialised here (orjson), so bound as text.
        Column("labels", Text, nullable=False),
        Column("owners", Text, nullable=False),
        Column("root_owner_kind", String(128), nullable=True),
        Column("root_owner_name", String(253), nullable=True),
    )


def naive_utc(value: Any) -> datetime | None:
    """A schema timestamp as a naive UTC datetime: DATETIME(6) has no time zone and PyMySQL drops
    ``tzinfo`` without converting, so anything but UTC would be stored shifted."""
    parsed = parse_time(value)
    return None if parsed is None else parsed.astimezone(UTC).replace(tzinfo=None)


def fallback_version(last_seen: datetime) -> int:
    """The guard when the resourceVersion is not a usable integer: last_seen in microseconds."""
    delta = last_seen - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_row(event: Event) -> Row:
    """One row of ``k8s_events``; KeyError/ValueError/TypeError when the event cannot be one."""
    involved = event["involved_object"]
    root = event.get("root_owner") or {}
    first_seen, last_seen = naive_utc(event["first_seen"]), naive_utc(event["last_seen"])
    if first_seen is None or last_seen is None:
        raise ValueError(
            f"bad first_seen/last_seen: {event['first_seen']!r}, {event['last_seen']!r}"
        )
    version = numeric_version(event)
    return {
        "uid": str(event["uid"]),
        "first_seen": first_seen,
        "cluster": event["cluster"],
        "namespace": event["namespace"],
        "name": event["name"],
        "api_version": event["api_version"],
        "involved_kind": involved["kind"],
        "involved_namespace": involved["namespace"],
        "involved_name": involved["name"],
        "involved_uid": involved["uid"],
        "type": event["type"],
        "reason": event["reason"],
        "message": event["message"],
        "reporting_component": event["reporting_component"],
        "reporting_instance": event["reporting_instance"],
        "severity": event["severity"],
        "count": int(event["count"]),
        "last_seen": last_seen,
        "observed_at": naive_utc(event.get("observed_at")),
        "resource_version": str(event["resource_version"]),
        "labels": orjson.dumps(event.get("labels") or {}).decode(),
        "owners": orjson.dumps(event.get("owners") or []).decode(),
        "root_owner_kind": root.get("kind"),
        "root_owner_name": root.get("name"),
        "guard_version": version if version is not None else fallback_version(last_seen),
    }


def newest_per_uid(rows: Sequence[Row]) -> list[Row]:
    """One row per uid, the one with the greatest guard (on a tie, the later in the batch), sorted
    by uid: concurrent writers then lock index records in the same order (fewer deadlocks)."""
    newest: dict[str, Row] = {}
    for row in rows:
        kept = newest.get(row["uid"])
        if kept is None or row["guard_version"] >= kept["guard_version"]:
            newest[row["uid"]] = row
    return [newest[uid] for uid in sorted(newest)]


def chunks(rows: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def upsert(table: Table) -> Insert:
    """``INSERT ... VALUES (<placeholders only>) ON DUPLICATE KEY UPDATE ...`` for executemany.

    - VALUES holds placeholders only, and the update part no bound value: PyMySQL rewrites
      executemany into multi-row statements only for that shape, else one statement per row.
    - The SET list is ordered (a list of pairs, not a dict, which SQLAlchemy would put in table
      order): MySQL assigns left to right and later expressions see earlier assignments, so
      ``guard_version`` moves last, after every column that compares against the stored one.
    - ``>=``: a redelivered version rewrites the same values; an older one changes nothing.
    SQLAlchemy renders ``VALUES(col)`` for MariaDB (which refuses the row alias) and
    ``AS new ... new.col`` for MySQL >= 8.0.20 (which deprecated ``VALUES()``).
    """
    stmt = mysql.insert(table)
    new, old = stmt.inserted, table.c
    newer = new.guard_version >= old.guard_version
    sets: list[tuple[str, Any]] = [("first_seen", func.least(old.first_seen, new.first_seen))]
    sets += [(name, case((newer, new[name]), else_=old[name])) for name in FOLLOW_NEWEST]
    sets.append(("guard_version", func.greatest(old.guard_version, new.guard_version)))
    return stmt.on_duplicate_key_update(sets)


def driver_upsert(statement: Insert, dialect: Dialect) -> tuple[str, Callable[[Row], Any]]:
    """``statement`` compiled once for ``dialect`` (a connected engine's: MariaDB and MySQL
    differ), as the driver's SQL, and what turns a row into its parameters: for
    ``Connection.exec_driver_sql``, which hands them to PyMySQL's executemany as they are.
    ``Connection.execute`` would process every row's parameters through the compiled statement
    again (~17 us of the ~55 us per row of client CPU, against the stack's MariaDB); none of
    these columns' types converts a value on the way in (checked: no bind processors)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(COLUMNS))
    if compiled._bind_processors:  # a column type that converts: the driver must not skip it
        raise TypeError(f"the upsert has bind processors: {sorted(compiled._bind_processors)}")
    if compiled.positional:
        order = list(compiled.positiontup or ())
        return str(compiled), lambda row: tuple(row[name] for name in order)
    return str(compiled), lambda row: row
