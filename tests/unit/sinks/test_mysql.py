"""The MySQL sink without a server: rows, the batch's collapse, the statement SQLAlchemy renders
for MariaDB and for MySQL 8, PyMySQL's batching of it, and the error classification."""

from __future__ import annotations

import asyncio
import copy
import re
from datetime import datetime
from typing import Any

import orjson
import pymysql
import pytest
from pydantic import SecretStr
from pymysql.cursors import RE_INSERT_VALUES, Cursor
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import pymysql as mysql_pymysql

from app.errors import Rejected, TransientError, UserError
from app.settings import MySQLSinkSettings
from app.sinks.mysql import MySQLSink, classify, sink_url, user_error
from app.sinks.mysql_rows import (
    COLUMNS,
    FOLLOW_NEWEST,
    chunks,
    driver_upsert,
    events_table,
    fallback_version,
    newest_per_uid,
    to_row,
    upsert,
)
from tests.fixtures.enriched import core_v1, enriched, events_v1

T0, T1 = "2024-05-01T12:00:00.000001Z", "2024-05-01T12:05:30.123456Z"


def record(uid: str = "u-1", rv: str = "1200", **changes: Any) -> dict[str, Any]:
    # no labels, no owners: test_row_columns checks how a bare event's row spells them
    event = enriched(core_v1(uid, rv=rv, count=3, first=T0, last=T1), labels={}, owners=[])
    event.update(changes)
    return event


# --------------------------------------------------------------------------------------------
# rows


def test_row_times_are_naive_utc_to_the_microsecond() -> None:
    row = to_row(record(observed_at="2024-05-01T14:00:00.5+02:00"))
    assert row["first_seen"] == datetime(2024, 5, 1, 12, 0, 0, 1)
    assert row["last_seen"] == datetime(2024, 5, 1, 12, 5, 30, 123456)
    # converted, not merely stripped of its zone: PyMySQL would drop +02:00 silently
    assert row["observed_at"] == datetime(2024, 5, 1, 12, 0, 0, 500000)
    assert all(row[c].tzinfo is None for c in ("first_seen", "last_seen", "observed_at"))
    assert to_row(record(observed_at=None))["observed_at"] is None


def test_row_columns_and_json() -> None:
    owners = [
        {"kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs", "api_version": "apps/v1"},
        {"kind": "Deployment", "name": "web", "uid": "d", "api_version": "apps/v1"},
    ]
    event = enriched(
        events_v1("u-2", rv="77", count=7, event_time=T0, last_observed=T1, note="Pulling 🐳"),
        labels={"app.kubernetes.io/name": "wéb 🚀"},
        owners=owners,
    )
    row = to_row(event)
    assert tuple(row) == COLUMNS
    assert set(COLUMNS) == {c.name for c in events_table("t").c} - {"id"}
    assert orjson.loads(row["labels"]) == {"app_kubernetes_io_name": "wéb 🚀"}
    assert orjson.loads(row["owners"]) == owners
    assert (row["root_owner_kind"], row["root_owner_name"]) == ("Deployment", "web")
    assert (row["api_version"], row["message"], row["count"]) == (
        "events.k8s.io/v1",
        "Pulling 🐳",
        7,
    )
    assert (row["involved_kind"], row["involved_name"], row["involved_namespace"]) == (
        "Pod",
        "web-2",
        "shop",
    )
    assert (row["reporting_component"], row["reporting_instance"]) == ("k8s.io/kubelet", "node-2")
    bare = to_row(record())
    assert (bare["labels"], bare["owners"], bare["root_owner_kind"]) == ("{}", "[]", None)


def test_guard_is_the_numeric_resource_version() -> None:
    assert to_row(record(rv="1200"))["guard_version"] == 1200
    assert to_row(record(rv=str(2**63 - 1)))["guard_version"] == 2**63 - 1


@pytest.mark.parametrize("rv", ["abc", "", "0", str(2**63), "12a", "-5"])
def test_guard_falls_back_to_last_seen_microseconds(rv: str) -> None:
    row = to_row(record(resource_version=rv, last_seen="1970-01-01T00:00:01.000002Z"))
    assert row["guard_version"] == 1_000_002
    assert row["resource_version"] == rv


def test_fallback_rises_with_last_seen_and_fits_a_bigint() -> None:
    assert fallback_version(datetime(2024, 5, 1, 12, 0, 0, 1)) == 1714564800000001
    assert fallback_version(datetime(1, 1, 1)) == -62135596800000000
    assert fallback_version(datetime(9999, 12, 31, 23, 59, 59, 999999)) < 2**63 - 1


@pytest.mark.parametrize(
    "change",
    [{"last_seen": "yesterday"}, {"first_seen": None}, {"involved_object": None}, {"count": "x"}],
)
def test_a_record_that_cannot_be_a_row_raises(change: dict[str, Any]) -> None:
    with pytest.raises((KeyError, ValueError, TypeError)):
        to_row(record(**change))


def test_write_returns_failures_for_records_that_cannot_be_rows() -> None:
    sink = MySQLSink(MySQLSinkSettings(url=SecretStr("mysql+pymysql://u@h/d")))
    bad = record()
    del bad["uid"]
    failures = asyncio.run(sink.write([bad, record(last_seen="never")]))
    assert [(f.index, f.retry) for f in failures] == [(0, False), (1, False)]
    assert "uid" in failures[0].reason


# --------------------------------------------------------------------------------------------
# collapse and chunks


def test_collapse_keeps_the_newest_per_uid_sorted_by_uid() -> None:
    rows = [
        {"uid": "b", "guard_version": 5, "n": 1},
        {"uid": "a", "guard_version": 9, "n": 2},
        {"uid": "b", "guard_version": 7, "n": 3},
        {"uid": "a", "guard_version": 3, "n": 4},  # older, arrives later: dropped
        {"uid": "c", "guard_version": 1, "n": 5},
        {"uid": "c", "guard_version": 1, "n": 6},  # a tie: the later one
    ]
    assert [r["n"] for r in newest_per_uid(rows)] == [2, 3, 6]


def test_chunks() -> None:
    assert [list(c) for c in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


# --------------------------------------------------------------------------------------------
# the statement


def dialect(version: tuple[int, ...], mariadb: bool) -> mysql_pymysql.dialect:
    """The engine's dialect (PyMySQL's paramstyle) as ``initialize`` would set it for a server
    of ``version``: that is where SQLAlchemy decides on the row alias (>= 8.0.20, MySQL only)."""
    d = mysql_pymysql.dialect()
    d.server_version_info = version
    d.is_mariadb = mariadb
    assert hasattr(d, "_requires_alias_for_on_duplicate_key"), "SQLAlchemy renamed the flag"
    d._requires_alias_for_on_duplicate_key = not mariadb and version >= (8, 0, 20)
    return d


SERVERS = {
    "mariadb-10.11": (dialect((10, 11, 19), mariadb=True), "VALUES({})"),
    "mysql-8.0.36": (dialect((8, 0, 36), mariadb=False), "new.{}"),
}


def rendered(name: str) -> str:
    d, _ = SERVERS[name]
    return str(upsert(events_table("k8s_events")).compile(dialect=d, column_keys=list(COLUMNS)))


def assignments(sql: str) -> list[tuple[str, str]]:
    """(column, expression) of the ON DUPLICATE KEY UPDATE part, in order."""
    update = sql.split(" ON DUPLICATE KEY UPDATE ", 1)[1]
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"(\w+) = (.+?)(?=, \w+ = |$)", update, flags=re.S)
    ]


@pytest.mark.parametrize("server", SERVERS)
def test_guard_column_is_assigned_last_and_guards_every_other(server: str) -> None:
    sql = rendered(server)
    _, new = SERVERS[server]
    sets = assignments(sql)
    assert [c for c, _ in sets] == ["first_seen", *FOLLOW_NEWEST, "guard_version"]
    guard = new.format("guard_version")
    assert sets[-1] == ("guard_version", f"greatest(k8s_events.guard_version, {guard})")
    assert sets[0] == ("first_seen", f"least(k8s_events.first_seen, {new.format('first_seen')})")
    for column, expression in sets[1:-1]:
        assert expression == (
            f"CASE WHEN ({guard} >= k8s_events.guard_version) THEN {new.format(column)}"
            f" ELSE k8s_events.{column} END"
        ), column


def test_mariadb_gets_values_and_mysql_8_the_row_alias() -> None:
    mariadb, mysql8 = rendered("mariadb-10.11"), rendered("mysql-8.0.36")
    assert " AS new " not in mariadb and "VALUES(count)" in mariadb  # 1064 on MariaDB
    assert (
        ") AS new ON DUPLICATE KEY UPDATE " in mysql8 and "VALUES(" not in mysql8.split(") AS")[1]
    )


@pytest.mark.parametrize("server", SERVERS)
def test_values_hold_placeholders_only_so_pymysql_batches_them(server: str) -> None:
    sql = rendered(server)
    match = RE_INSERT_VALUES.match(sql)
    assert match, "PyMySQL would run one statement per row"
    assert match.group(2).replace("%s", "").strip("(), ") == ""
    assert match.group(3) % () == match.group(3), "a bound value or a bare % after VALUES"


class RecordingCursor(Cursor):  # type: ignore[misc]  # pymysql is untyped: Cursor is Any
    """PyMySQL's own executemany, with the statements it would send recorded, not sent."""

    class Connection:
        encoding = "utf8"

        def escape(self, value: Any) -> str:
            return str(pymysql.converters.escape_item(value, "utf8mb4"))

    def __init__(self) -> None:
        super().__init__(self.Connection())
        self.sent: list[str] = []

    def execute(self, query: Any, args: Any = None) -> int:
        self.sent.append(query.decode() if isinstance(query, bytes | bytearray) else query)
        return 1


@pytest.mark.parametrize("paramstyle", ["format", "pyformat"])
@pytest.mark.parametrize("server", SERVERS)
def test_pymysql_sends_one_statement_for_a_chunk(server: str, paramstyle: str) -> None:
    """What the sink hands PyMySQL (driver_upsert: the SQL compiled once, each row's
    parameters as they are), in either paramstyle an engine may have: one statement per
    chunk, whose values are those SQLAlchemy's own execution would send."""
    d = copy.copy(SERVERS[server][0])  # the others test the default paramstyle
    d.paramstyle, d.positional = paramstyle, paramstyle == "format"
    statement = upsert(events_table("k8s_events"))
    sql, parameters = driver_upsert(statement, d)
    rows = [to_row(record(uid=f"u-{i}", rv=str(100 + i))) for i in range(50)]
    cursor = RecordingCursor()
    cursor.executemany(sql, [parameters(r) for r in rows])
    assert len(cursor.sent) == 1
    assert cursor.sent[0].count("'u-") == 50
    assert "'2024-05-01 12:05:30.123456'" in cursor.sent[0]
    compiled = statement.compile(dialect=d, column_keys=list(COLUMNS))
    via_sqlalchemy = RecordingCursor()
    processed = [compiled.construct_params(r) for r in rows]
    if compiled.positional:
        order = compiled.positiontup or []
        via_sqlalchemy.executemany(str(compiled), [tuple(p[k] for k in order) for p in processed])
    else:
        via_sqlalchemy.executemany(str(compiled), processed)
    assert cursor.sent == via_sqlalchemy.sent


# --------------------------------------------------------------------------------------------
# errors


def db_error(cls: type[sa_exc.DBAPIError], orig: BaseException) -> sa_exc.DBAPIError:
    return cls("INSERT ...", {}, orig)


def op_error(number: int, message: str = "") -> sa_exc.DBAPIError:
    """How SQLAlchemy wraps what PyMySQL raises for most server errors."""
    return db_error(sa_exc.OperationalError, pymysql.err.OperationalError(number, message))


CASES: list[tuple[BaseException, type[Exception] | None]] = [
    (op_error(1040, "Too many"), TransientError),
    (op_error(1205, "Lock wait"), TransientError),
    (op_error(1213, "Deadlock"), TransientError),
    (op_error(2003, "Can't connect"), TransientError),
    (op_error(2006, "gone away"), TransientError),
    (op_error(2013, "Lost"), TransientError),
    (db_error(sa_exc.InterfaceError, pymysql.err.InterfaceError(0, "")), TransientError),
    (db_error(sa_exc.OperationalError, pymysql.err.OperationalError()), TransientError),
    (sa_exc.TimeoutError("QueuePool limit of size 2 overflow 0 reached"), TransientError),
    (db_error(sa_exc.IntegrityError, pymysql.err.IntegrityError(1048, "cannot be null")), Rejected),
    (db_error(sa_exc.DataError, pymysql.err.DataError(1264, "Out of range")), Rejected),
    (op_error(1292, "Incorrect datetime"), Rejected),
    (db_error(sa_exc.DataError, pymysql.err.DataError(1366, "Incorrect string value")), Rejected),
    (db_error(sa_exc.DataError, pymysql.err.DataError(1406, "Data too long")), Rejected),
    (db_error(sa_exc.DataError, pymysql.err.DataError(3140, "Invalid JSON")), Rejected),
    (op_error(4025, "CONSTRAINT failed"), Rejected),
    (db_error(sa_exc.ProgrammingError, pymysql.err.ProgrammingError(1064, "syntax")), None),
    (db_error(sa_exc.ProgrammingError, pymysql.err.ProgrammingError(1146, "no table")), None),
    (ValueError("not a database error"), None),
]  # fmt: skip


@pytest.mark.parametrize(("error", "expected"), CASES, ids=[repr(e)[:60] for e, _ in CASES])
def test_errors_are_classified_by_number(
    error: BaseException, expected: type[Exception] | None
) -> None:
    mapped = classify(error)
    assert type(mapped) is (expected or type(None))


def test_the_reason_is_the_servers_number_and_words_on_one_line() -> None:
    mapped = classify(
        db_error(
            sa_exc.DataError,
            pymysql.err.DataError(1406, "Data too long for column 'reason'\n at row 3"),
        )
    )
    assert isinstance(mapped, Rejected)
    assert mapped.reason == "MySQL error 1406: Data too long for column 'reason' at row 3"


URL = sink_url(MySQLSinkSettings(url=SecretStr("mysql+pymysql://kv:s3cr3t-pw@db.example:3307/ev")))


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (1045, "check the user and password in KUBEVENTS_MYSQL_URL"),
        (1049, "CREATE DATABASE ev CHARACTER SET utf8mb4"),
        (1044, "GRANT SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX ON ev.*"),
        (1142, "GRANT SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX ON ev.*"),
    ],
)
def test_start_up_errors_say_what_to_set(number: int, words: str) -> None:
    error = db_error(sa_exc.OperationalError, pymysql.err.OperationalError(number, "denied"))
    user = user_error(error, URL)
    assert isinstance(user, UserError)
    message = str(user)
    assert words in message and "\n" not in message and "s3cr3t" not in message
    if number in (1045, 1049):
        assert "db.example:3307" in message
    assert user_error(op_error(2003), URL) is None


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("mysql+pymysql://u:p@h/d", "mysql+pymysql"),
        ("mysql://u:p@h/d", "mysql+pymysql"),
        ("mariadb://u:p@h/d", "mysql+pymysql"),
        ("mariadb+pymysql://u:p@h/d", "mysql+pymysql"),
    ],
)
def test_the_url_is_driven_by_pymysql(url: str, driver: str) -> None:
    assert sink_url(MySQLSinkSettings(url=SecretStr(url))).drivername == driver


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (None, "no MySQL URL: set KUBEVENTS_MYSQL_URL"),
        ("postgresql://u:s3cr3t@h/d", "must be a mysql+pymysql:// URL"),
        ("mysql+pymysql://u:s3cr3t@h", "names no database"),
        ("not a url s3cr3t", "is not a URL"),
    ],
)
def test_bad_urls_are_user_errors_without_the_secret(url: str | None, words: str) -> None:
    options = MySQLSinkSettings(url=SecretStr(url) if url else None)
    with pytest.raises(UserError, match=re.escape(words)) as caught:
        sink_url(options)
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("table", ["", "1abc", "a-b", "x" * 41, "t; DROP TABLE x"])
def test_table_names_are_checked(table: str) -> None:
    with pytest.raises(UserError, match="table name"):
        MySQLSink(MySQLSinkSettings(table=table))
