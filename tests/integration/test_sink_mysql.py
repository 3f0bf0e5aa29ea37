"""The MySQL sink against the stack's real MariaDB: migrations, the rows a known stream leaves
(redelivered, out of order), one statement per chunk, rejections, start-up errors and TLS.

The server is shared with other engineers: every test works in its own database (kv_test_<8 hex>)
and drops it at the end; the statement counter read is the sink's own session's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from app.errors import Rejected, TransientError, UserError
from app.settings import MySQLSinkSettings
from app.sinks.mysql import MIGRATIONS, MySQLSink, migrate
from app.sinks.mysql_rows import COLUMNS
from tests.fixtures.enriched import core_v1, enriched, events_v1
from tests.integration.conftest import free_port, need_env

TABLE = "k8s_events"


def base_url() -> URL:
    return make_url(need_env("KUBEVENTS_MYSQL_URL")).set(drivername="mysql+pymysql")


def admin() -> pymysql.Connection[Any]:
    url = base_url()
    return pymysql.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        autocommit=True,
        charset="utf8mb4",
    )


@pytest.fixture()
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this test's own (``@pytest.mark.parametrize("database", ["latin1"],
    indirect=True)`` for another default character set); dropped at the end."""
    charset = getattr(request, "param", "utf8mb4")
    name = f"kv_test_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        conn.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET {charset}")
    try:
        yield name
    finally:
        with admin() as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")


def url_of(database: str, **changes: Any) -> str:
    return base_url().set(database=database, **changes).render_as_string(hide_password=False)


def make_sink(database: str, **options: Any) -> MySQLSink:
    return MySQLSink(MySQLSinkSettings(url=SecretStr(url_of(database)), **options))


def engine_of(sink: MySQLSink) -> Engine:
    assert sink._engine is not None
    return sink._engine


def query(database: str, sql: str) -> list[dict[str, Any]]:
    with admin() as conn:
        conn.select_db(database)
        cur = conn.cursor(pymysql.cursors.DictCursor)
        cur.execute(sql)
        return list(cur.fetchall())


def head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def recorded_version(database: str) -> list[str]:
    return [r["version_num"] for r in query(database, f"SELECT * FROM {TABLE}_alembic_version")]


def indexes(database: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for r in query(database, f"SHOW INDEX FROM {TABLE}"):
        found.setdefault(r["Key_name"], []).append(r["Column_name"])
    return found


QUERY_INDEXES = {
    f"ix_{TABLE}_namespace_last_seen": ["namespace", "last_seen"],
    f"ix_{TABLE}_reason_last_seen": ["reason", "last_seen"],
    f"ix_{TABLE}_involved": ["involved_kind", "involved_namespace", "involved_name", "last_seen"],
    f"ix_{TABLE}_last_seen": ["last_seen"],
}


# --------------------------------------------------------------------------------------------
# (a) migrations


def test_start_migrates_an_empty_database_to_head(database: str) -> None:
    assert [s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()] == [
        "0002",
        "0001",
    ]
    sink = make_sink(database)
    asyncio.run(sink.start())
    asyncio.run(sink.start())  # again: nothing to do, no error
    asyncio.run(sink.stop())
    assert recorded_version(database) == [head()] == ["0002"]
    tables = {next(iter(r.values())) for r in query(database, "SHOW TABLES")}
    assert tables == {TABLE, f"{TABLE}_alembic_version"}
    columns = {
        r["COLUMN_NAME"]: r
        for r in query(
            database,
            "SELECT * FROM information_schema.COLUMNS"
            f" WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{TABLE}'",
        )
    }
    assert set(COLUMNS) | {"id"} == set(columns)
    assert columns["message"]["DATA_TYPE"] == "mediumtext"
    for name in ("first_seen", "last_seen", "observed_at"):
        assert (columns[name]["DATA_TYPE"], columns[name]["DATETIME_PRECISION"]) == ("datetime", 6)
    assert (columns["guard_version"]["DATA_TYPE"], columns["guard_version"]["IS_NULLABLE"]) == (
        "bigint",
        "NO",
    )
    assert columns["uid"]["CHARACTER_SET_NAME"] == "utf8mb4"
    (info,) = query(
        database,
        "SELECT TABLE_COLLATION FROM information_schema.TABLES"
        f" WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{TABLE}'",
    )
    assert info["TABLE_COLLATION"] == "utf8mb4_bin"
    found = indexes(database)
    assert found[f"uq_{TABLE}_uid"] == ["uid"]
    assert {k: v for k, v in found.items() if k.startswith("ix_")} == QUERY_INDEXES


def replica(database: str, tables: list[str], barrier: Any) -> None:
    """One replica's process: starts a sink on each table, in step with the other replicas."""
    for table in tables:
        barrier.wait(60)
        sink = make_sink(database, table=table)
        try:
            asyncio.run(sink.start())
        except BaseException:
            barrier.abort()  # the others stop waiting for this one
            raise  # and the process exits with 1
        asyncio.run(sink.stop())


def test_replicas_starting_together_migrate_once(database: str) -> None:
    """Four replicas (processes) start at the same moment on an empty table, three times: the
    server's named lock lets one migrate while the others wait, instead of racing to create the
    same tables and indexes (1050, 1061)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    tables = [f"race_{i}" for i in range(3)]
    replicas = [context.Process(target=replica, args=(database, tables, barrier)) for _ in range(4)]
    for process in replicas:
        process.start()
    for process in replicas:
        process.join(120)
    assert [p.exitcode for p in replicas] == [0] * 4
    for table in tables:
        rows = query(database, f"SELECT version_num FROM {table}_alembic_version")
        assert rows == [{"version_num": head()}]


def test_sinks_in_one_process_migrate_one_at_a_time(database: str) -> None:
    """Two tables at once in one process: alembic's module-level context is not shared."""
    sinks = [make_sink(database, table=f"events_{i}") for i in range(4)]

    async def start_all() -> None:
        await asyncio.gather(*(sink.start() for sink in sinks))
        await asyncio.gather(*(sink.stop() for sink in sinks))

    asyncio.run(start_all())
    for i in range(4):
        rows = query(database, f"SELECT version_num FROM events_{i}_alembic_version")
        assert rows == [{"version_num": head()}]


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


ROW_0001 = {
    "uid": "old-uid",
    "cluster": "c1",
    "namespace": "shop",
    "name": "web.1",
    "api_version": "v1",
    "involved_kind": "Pod",
    "involved_namespace": "shop",
    "involved_name": "web",
    "involved_uid": "pod-1",
    "type": "Warning",
    "reason": "BackOff",
    "message": "written by revision 0001 🐳",
    "reporting_component": "kubelet",
    "reporting_instance": "node-1",
    "severity": "warning",
    "count": 2,
    "first_seen": datetime(2024, 5, 1, 12, 0, 0, 1),
    "last_seen": datetime(2024, 5, 1, 12, 1, 0, 999999),
    "observed_at": None,
    "resource_version": "500",
    "guard_version": 500,
    "labels": '{"app": "web"}',
    "owners": "[]",
    "root_owner_kind": None,
    "root_owner_name": None,
}


def test_upgrade_from_0001_keeps_the_rows(database: str) -> None:
    engine = create_engine(url_of(database))
    try:
        with engine.connect() as conn:
            migrate(conn, TABLE, "0001")
            conn.commit()
            names = ", ".join(ROW_0001)
            values = ", ".join(f":{k}" for k in ROW_0001)
            conn.execute(text(f"INSERT INTO {TABLE} ({names}) VALUES ({values})"), ROW_0001)
            conn.commit()
    finally:
        engine.dispose()
    assert recorded_version(database) == ["0001"]
    assert not [k for k in indexes(database) if k.startswith("ix_")]

    sink = make_sink(database)
    asyncio.run(sink.start())
    assert recorded_version(database) == [head()]
    assert {k: v for k, v in indexes(database).items() if k.startswith("ix_")} == QUERY_INDEXES
    (row,) = query(database, f"SELECT * FROM {TABLE}")
    assert {k: row[k] for k in ROW_0001} == ROW_0001
    # the migrated row is the one the sink upserts: a newer version updates it in place
    newer = enriched(
        core_v1("old-uid", rv="501", count=3, first="2024-05-01T12:00:00Z", last=T.format("02:00")),
        cluster="c1",  # ROW_0001's
    )
    assert asyncio.run(sink.write([newer])) == []
    asyncio.run(sink.stop())
    (row,) = query(database, f"SELECT * FROM {TABLE}")
    assert (row["count"], row["resource_version"], row["first_seen"]) == (
        3,
        "501",
        datetime(2024, 5, 1, 12, 0, 0),
    )


# --------------------------------------------------------------------------------------------
# (b) a known stream, out of order and redelivered

BIG = "💥" * 12_000 + "x" * 18_720  # 30 720 characters, 66 720 bytes: more than TEXT holds
EMOJI = "Pulling image 🐳 nginx — ünïcødé 🚀"
OWNERS = [
    {"kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs-1", "api_version": "apps/v1"},
    {"kind": "Deployment", "name": "web", "uid": "dep-1", "api_version": "apps/v1"},
]
T = "2024-05-01T12:{}Z"
T0 = T.format("00:00.000001")
OBSERVED_AT = T.format("59:00.000001")  # check_rows reads it back from uid-a

# Versions of six events: (uid, resourceVersion, count, first seen, last seen at 12:MM:SS.ffffff,
# message). a: repeats 1 -> 3 -> 5; b: events.k8s.io/v1 with emoji and labels; c: 30 KB; d: ADDED
# then DELETED; e: resourceVersions that are no numbers (the fallback guard); g: the newer version
# carries a later first_seen than the older one.
VERSIONS = {
    "a1": ("uid-a", "101", 1, "00:00.000001", "00:00.000001", "a x1"),
    "a3": ("uid-a", "205", 3, "00:00.000001", "01:00.250000", "a x3"),
    "a5": ("uid-a", "309", 5, "00:00.000001", "02:30.999999", "a x5"),
    "b2": ("uid-b", "150", 2, "10:00.123456", "10:05.000000", EMOJI),
    "b4": ("uid-b", "160", 4, "10:00.123456", "11:05.654321", EMOJI + "!"),
    "c": ("uid-c", "120", 1, "20:00.000000", "20:00.000000", BIG),
    "d1": ("uid-d", "130", 1, "30:00.000000", "30:00.000000", "d"),
    "d-deleted": ("uid-d", "340", 2, "30:00.000000", "31:00.000000", "d gone"),
    "e1": ("uid-e", "x-1", 1, "40:00.000000", "40:10.000000", "e 1"),
    "e2": ("uid-e", "x-2", 2, "40:00.000000", "40:20.000000", "e 2"),
    "g1": ("uid-g", "100", 1, "50:00.500000", "50:00.500000", "g 1"),
    "g2": ("uid-g", "200", 2, "50:30.000007", "51:00.000000", "g 2"),
}


def stream() -> dict[str, dict[str, Any]]:
    out = {}
    for name, (uid, rv, count, first_at, last_at, message) in VERSIONS.items():
        first, last = T.format(first_at), T.format(last_at)
        if uid == "uid-b":
            obj = events_v1(
                uid, rv=rv, count=count, event_time=first, last_observed=last, note=message
            )
            labels = {"app": "web", "app.kubernetes.io/name": "wéb 🚀"}
            out[name] = enriched(obj, labels=labels, owners=OWNERS, observed_at=OBSERVED_AT)
        else:
            obj = core_v1(uid, rv=rv, count=count, first=first, last=last, message=message)
            watch_type = "DELETED" if name == "d-deleted" else "ADDED"
            out[name] = enriched(obj, watch_type=watch_type, observed_at=OBSERVED_AT)
    return out


BATCHES = [
    ["a1", "b2", "c", "d1", "e1"],
    ["a3", "b4", "g2"],
    ["a5", "a3", "d-deleted", "e2"],  # a3 after a5 in one batch
    ["a3", "e1", "g1", "b2", "a1"],  # late, older versions
]

EXPECTED = {
    "uid-a": ("v1", "309", 5, "00:00.000001", "02:30.999999", "a x5"),
    "uid-b": ("events.k8s.io/v1", "160", 4, "10:00.123456", "11:05.654321", EMOJI + "!"),
    "uid-c": ("v1", "120", 1, "20:00.000000", "20:00.000000", BIG),
    "uid-d": ("v1", "340", 2, "30:00.000000", "31:00.000000", "d gone"),
    "uid-e": ("v1", "x-2", 2, "40:00.000000", "40:20.000000", "e 2"),
    "uid-g": ("v1", "200", 2, "50:00.500000", "51:00.000000", "g 2"),  # the earliest first_seen
}


EPOCH = datetime(1970, 1, 1)


def at(minute_second: str) -> datetime:
    return datetime.strptime(f"2024-05-01 12:{minute_second}", "%Y-%m-%d %H:%M:%S.%f")


def check_rows(database: str) -> None:
    rows = query(
        database,
        f"SELECT *, LENGTH(message) AS message_bytes FROM {TABLE} ORDER BY uid",
    )
    got = {
        r["uid"]: (
            r["api_version"],
            r["resource_version"],
            r["count"],
            r["first_seen"],
            r["last_seen"],
            r["message"],
        )
        for r in rows
    }
    want = {
        uid: (api, rv, count, at(first), at(last), message)
        for uid, (api, rv, count, first, last, message) in EXPECTED.items()
    }
    assert len(rows) == len(want)
    for uid in want:
        assert got[uid][:5] == want[uid][:5], uid
        assert got[uid][5] == want[uid][5], f"{uid}: message differs"
    by_uid = {r["uid"]: r for r in rows}
    for uid, (*_, message) in EXPECTED.items():
        assert by_uid[uid]["message_bytes"] == len(message.encode()), uid
    b = by_uid["uid-b"]
    assert json.loads(b["labels"]) == {"app": "web", "app_kubernetes_io_name": "wéb 🚀"}
    assert json.loads(b["owners"]) == OWNERS
    assert (b["root_owner_kind"], b["root_owner_name"]) == ("Deployment", "web")
    assert (b["involved_name"], b["reporting_component"]) == ("web-2", "k8s.io/kubelet")
    # a resourceVersion that is no number: last_seen in microseconds since the epoch
    assert by_uid["uid-e"]["guard_version"] == (at("40:20.000000") - EPOCH) // timedelta(
        microseconds=1
    )
    assert by_uid["uid-a"]["observed_at"] == datetime(2024, 5, 1, 12, 59, 0, 1)


@pytest.mark.parametrize("database", ["latin1"], indirect=True)
def test_a_stream_written_out_of_order_and_twice_leaves_exactly_the_newest_rows(
    database: str,
) -> None:
    """In a latin1 database (MariaDB's compiled default): the table declares utf8mb4 itself."""
    events = stream()
    sink = make_sink(database, chunk_rows=2)
    asyncio.run(sink.start())
    try:
        for batch in BATCHES:
            assert asyncio.run(sink.write([events[name] for name in batch])) == []
        check_rows(database)
        for batch in BATCHES:  # redelivery after a crash: everything again
            assert asyncio.run(sink.write([events[name] for name in batch])) == []
        # and all of it at once, oldest last
        assert asyncio.run(sink.write([events[n] for n in reversed(list(events))])) == []
    finally:
        asyncio.run(sink.stop())
    check_rows(database)


# --------------------------------------------------------------------------------------------
# (c) one multi-row statement per chunk


def simple(uid: str, rv: int) -> dict[str, Any]:
    return enriched(core_v1(uid, rv=str(rv), count=1, first=T0, last=T0))


def session_inserts(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Com_insert'").one()[1])


def test_each_chunk_is_one_multi_row_statement(database: str) -> None:
    """Counted by the server (Com_insert of the sink's only connection), not by SQLAlchemy,
    which sees one executemany call whether PyMySQL batched it or sent a statement per row."""
    sink = make_sink(database, chunk_rows=500, pool_size=1)
    asyncio.run(sink.start())
    engine = engine_of(sink)
    calls: list[bool] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(  # noqa: PLR0917 (SQLAlchemy's signature)
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.startswith("INSERT"):
            calls.append(many)

    events = [simple(f"uid-{i:05d}", 1000 + i) for i in range(1250)]
    try:
        before = session_inserts(engine)
        assert asyncio.run(sink.write(events)) == []
        assert session_inserts(engine) - before == 3  # 500 + 500 + 250
        assert calls == [True, True, True]  # executemany, once per chunk
        before = session_inserts(engine)
        assert asyncio.run(sink.write(events[:10])) == []
        assert session_inserts(engine) - before == 1
    finally:
        asyncio.run(sink.stop())
    assert query(database, f"SELECT COUNT(*) AS n FROM {TABLE}") == [{"n": 1250}]


# --------------------------------------------------------------------------------------------
# (d) rejections


def test_a_value_too_long_is_rejected_with_the_servers_reason(database: str) -> None:
    """Strict mode is the sink's own (its session's sql_mode), so 1406 holds whatever the
    server's default; the whole write() is one transaction, so nothing of the batch lands and
    the pipeline's bisection writes the good halves again."""
    sink = make_sink(database, chunk_rows=2)
    asyncio.run(sink.start())
    events = [simple(f"uid-{i}", 10 + i) for i in range(1, 6)]
    events[2]["reason"] = "R" * 256  # uid-3: the second chunk of three
    try:
        with engine_of(sink).connect() as conn:
            mode = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
        assert "STRICT_ALL_TABLES" in str(mode).split(",")
        with pytest.raises(Rejected) as caught:
            asyncio.run(sink.write(events))
        assert caught.value.reason == (
            "MySQL error 1406: Data too long for column 'reason' at row 1"
        )
        assert query(database, f"SELECT uid FROM {TABLE}") == []  # chunk 1 rolled back too
        # what the pipeline's bisection does next: the halves without the bad record go in
        assert asyncio.run(sink.write(events[:2])) == []
        assert asyncio.run(sink.write(events[3:])) == []
        with pytest.raises(Rejected, match="1406"):
            asyncio.run(sink.write(events[2:3]))
        # a record that is not an event at all is a Failure of its own; the others are written
        broken = {**events[0], "uid": "uid-9", "first_seen": "not a time"}
        failures = asyncio.run(sink.write([broken, events[0]]))
        assert [(f.index, f.retry) for f in failures] == [(0, False)]
    finally:
        asyncio.run(sink.stop())
    rows = query(database, f"SELECT uid FROM {TABLE} ORDER BY uid")
    assert [r["uid"] for r in rows] == ["uid-1", "uid-2", "uid-4", "uid-5"]


# --------------------------------------------------------------------------------------------
# (e) start-up errors


def start_error(url: str) -> BaseException:
    sink = MySQLSink(MySQLSinkSettings(url=SecretStr(url), connect_timeout_s=5))
    with pytest.raises((UserError, TransientError)) as caught:
        asyncio.run(sink.start())
    assert sink._engine is None  # nothing left open
    message = str(caught.value)
    assert "\n" not in message and "s3cr3t" not in message, message
    return caught.value


def test_a_wrong_password_is_a_user_error_on_one_line(database: str) -> None:
    error = start_error(url_of(database, password="s3cr3t-pw"))
    assert isinstance(error, UserError)
    assert "check the user and password in KUBEVENTS_MYSQL_URL" in str(error)
    assert "Access denied" in str(error) and "MySQL error 1045" in str(error)


def test_an_unknown_database_is_a_user_error() -> None:
    missing = f"kv_missing_{uuid.uuid4().hex[:8]}"
    error = start_error(url_of(missing))
    assert isinstance(error, UserError)
    assert f"database '{missing}' does not exist" in str(error)


def test_a_closed_port_is_transient() -> None:
    url = base_url().set(host="127.0.0.1", port=free_port(), database="kubevents")
    error = start_error(url.render_as_string(hide_password=False))
    assert isinstance(error, TransientError)
    assert "MySQL error 2003" in str(error)


def test_missing_privileges_are_user_errors(database: str) -> None:
    user = f"kv_test_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        conn.cursor().execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 's3cr3t-pw'")
    try:
        url = url_of(database, host="127.0.0.1", username=user, password="s3cr3t-pw")
        error = start_error(url)  # no grant at all: 1044 at connect
        assert isinstance(error, UserError) and "MySQL error 1044" in str(error)
        assert f"GRANT SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX ON {database}.*" in str(error)
        with admin() as conn:
            conn.cursor().execute(f"GRANT SELECT ON {database}.* TO '{user}'@'127.0.0.1'")
        error = start_error(url)  # can connect, cannot create the tables: 1142
        assert isinstance(error, UserError) and "MySQL error 1142" in str(error)
        assert "GRANT SELECT, INSERT" in str(error)
    finally:
        with admin() as conn:
            conn.cursor().execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


# --------------------------------------------------------------------------------------------
# (f) TLS, against the stack's MariaDB: TLS optional for clients, a CA of the stack's own, and two
# users the server refuses without TLS (REQUIRE SSL) or without a client certificate of that CA
# (REQUIRE X509). PyMySQL tries TLS unasked when the server offers it, so a write as the first
# user alone proves little: each test also shows what the settings change.


def tls_url(database: str, user: str = "SSL", host: str = "127.0.0.1") -> str:
    url = make_url(need_env(f"KUBEVENTS_TEST_MYSQL_{user}_URL"))
    return url.set(host=host, database=database).render_as_string(hide_password=False)


def tls_sink(url: str, **options: Any) -> MySQLSink:
    return MySQLSink(MySQLSinkSettings(url=SecretStr(url), connect_timeout_s=5, **options))


def tls_start_error(url: str, **options: Any) -> UserError:
    sink = tls_sink(url, **options)
    with pytest.raises(UserError) as caught:  # never TransientError: retrying cannot help
        asyncio.run(sink.start())
    assert sink._engine is None
    message = str(caught.value)
    assert "\n" not in message and "kubevents-stack-secret" not in message, message
    return caught.value


def session_tls(sink: MySQLSink) -> tuple[str, str]:
    """The server's view of the sink's own connection: (Ssl_version, Ssl_cipher)."""
    with engine_of(sink).connect() as conn:
        rows = conn.execute(
            text("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        ).all()
    status = {str(name): str(value) for name, value in rows}
    return status["Ssl_version"], status["Ssl_cipher"]


def write_two(sink: MySQLSink, database: str) -> None:
    asyncio.run(sink.start())
    try:
        assert asyncio.run(sink.write([simple("uid-1", 11), simple("uid-2", 12)])) == []
    finally:
        asyncio.run(sink.stop())
    assert [r["uid"] for r in query(database, f"SELECT uid FROM {TABLE} ORDER BY uid")] == [
        "uid-1",
        "uid-2",
    ]


@pytest.fixture()
def other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the server's certificate."""
    key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=other-ca",
    ]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(ca)],
        check=True,
        capture_output=True,
    )
    return ca


def test_with_the_ca_the_sink_writes_over_verified_tls(database: str) -> None:
    sink = tls_sink(tls_url(database), ssl_ca=need_env("KUBEVENTS_TEST_MYSQL_CA"))
    asyncio.run(sink.start())
    try:
        version, cipher = session_tls(sink)
        assert version.startswith("TLSv1.") and cipher, (version, cipher)
    finally:
        asyncio.run(sink.stop())
    write_two(sink, database)
    # The same user with TLS turned off: the server refuses it, so the rows above came over TLS.
    error = tls_start_error(tls_url(database), ssl_mode="disabled")
    assert "MySQL error 1045" in str(error) and "KUBEVENTS_MYSQL_SSL_MODE=required" in str(error)


def test_the_url_query_form_of_the_ca_is_honoured(database: str, other_ca: Path) -> None:
    """?ssl_ca= as SQLAlchemy documents it: verified against it (a wrong one fails)."""
    good = tls_url(database) + "?ssl_ca=" + need_env("KUBEVENTS_TEST_MYSQL_CA")
    write_two(tls_sink(good), database)
    error = tls_start_error(tls_url(database) + f"?ssl_ca={other_ca}")
    assert f"the CA file '{other_ca}' did not sign it" in str(error)


def test_mutual_tls_with_the_client_certificate(database: str) -> None:
    ca = need_env("KUBEVENTS_TEST_MYSQL_CA")
    url = tls_url(database, "X509")
    sink = tls_sink(
        url,
        ssl_ca=ca,
        ssl_cert=need_env("KUBEVENTS_TEST_MYSQL_CLIENT_CERT"),
        ssl_key=need_env("KUBEVENTS_TEST_MYSQL_CLIENT_KEY"),
    )
    write_two(sink, database)
    # TLS without the certificate: refused by the server, and the error says what to add.
    error = tls_start_error(url, ssl_ca=ca)
    assert "MySQL error 1045" in str(error)
    assert "KUBEVENTS_MYSQL_SSL_CERT and KUBEVENTS_MYSQL_SSL_KEY" in str(error)


def test_a_ca_that_did_not_sign_the_server_is_a_user_error_naming_it(
    database: str, other_ca: Path
) -> None:
    error = tls_start_error(tls_url(database), ssl_ca=str(other_ca))
    assert str(error).startswith("MySQL at 127.0.0.1:3306: its TLS certificate failed verification")
    assert f"the CA file '{other_ca}' did not sign it" in str(error)
    assert "set KUBEVENTS_MYSQL_SSL_CA (or the pipeline's mysql.ssl_ca) to the CA" in str(error)


def test_a_ca_file_that_does_not_exist_is_a_user_error_naming_it(
    database: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    error = tls_start_error(tls_url(database), ssl_ca=str(missing))
    assert f"MySQL TLS file '{missing}', set by KUBEVENTS_MYSQL_SSL_CA" in str(error)
    assert "does not exist" in str(error)


def test_a_host_name_the_certificate_does_not_hold(database: str) -> None:
    """127.1 reaches 127.0.0.1, but the certificate names 127.0.0.1 and localhost only."""
    ca = need_env("KUBEVENTS_TEST_MYSQL_CA")
    error = tls_start_error(tls_url(database, host="127.1"), ssl_ca=ca)
    assert "its TLS certificate does not name that host" in str(error)
    assert "KUBEVENTS_MYSQL_SSL_VERIFY_IDENTITY" in str(error)
    write_two(
        tls_sink(tls_url(database, host="127.1"), ssl_ca=ca, ssl_verify_identity=False), database
    )


def test_required_without_verification_needs_no_ca(database: str) -> None:
    """kube-eventer's tls=skip-verify. Verification is what was turned off: the same settings
    with it on fail, the stack's CA being no system CA."""
    sink = tls_sink(tls_url(database), ssl_mode="required", ssl_verify_cert=False)
    asyncio.run(sink.start())
    try:
        assert session_tls(sink)[1]
    finally:
        asyncio.run(sink.stop())
    write_two(sink, database)
    error = tls_start_error(tls_url(database), ssl_mode="required")
    assert "no system CA signed it" in str(error)
