"""The MySQL / MariaDB sink: enriched events from k8s-events upserted into one row per event uid.

``start`` connects, checks the server, and migrates the table with alembic (the revisions in
app/sinks/mysql_migrations); ``write`` collapses a batch to the newest version per uid and upserts
it chunk by chunk with multi-row statements (app/sinks/mysql_rows.py). Rows are never deleted: a
DELETED watch record (the API server's TTL expiry) is an ordinary upsert.

The engine is SQLAlchemy's sync one over PyMySQL, called through ``asyncio.to_thread``: PyMySQL's
``executemany`` turns an upsert into multi-row statements (measured 30-40x faster than row by row),
the async drivers would be one more dependency for no gain (to_thread measured as fast), and a
blocking call never stalls the worker's event loop (Kafka heartbeats, the web server).

TLS (disabled, preferred or required, verified against a CA, mutual) is resolved from the settings
by app/sinks/mysql_tls.py before the engine is built; a TLS failure at start is a UserError.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.dialects.mysql.base import MySQLDialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.errors import Rejected, TransientError, UserError
from app.settings import MySQLSinkSettings
from app.sinks import mysql_tls
from app.sinks.base import Event, Failure, Unwritable, write_events
from app.sinks.mysql_rows import (
    Row,
    chunks,
    driver_upsert,
    events_table,
    newest_per_uid,
    to_row,
    upsert,
)

MIGRATIONS = Path(__file__).with_name("mysql_migrations")
# The table name is also the stem of its index names and alembic version table (64 characters
# at most in MySQL).
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")
MIN_MYSQL, MIN_MARIADB = (8, 0), (10, 6)
MIGRATION_LOCK_WAIT_S = 60
# alembic's ``context`` and ``op`` are module-level proxies: two upgrades at once in one process
# (two sinks, any tables) would run one's revisions on the other's connection (reproduced:
# "Packet sequence number wrong", KeyError('config')). The server's GET_LOCK covers processes.
_ALEMBIC = threading.Lock()

# Strict whatever the server's default: a value that does not fit is refused (and dead-lettered
# by the pipeline), never silently truncated or zeroed. DATETIME has no zone; UTC for the rest.
SESSION_INIT = (
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,"
    "ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'"
)

# By error number, not exception class: PyMySQL reports 4025 (a JSON CHECK) as OperationalError
# and 1406 as DataError, the same classes as a lost connection.
TRANSIENT = frozenset({1040, 1205, 1213, 2003, 2006, 2013})  # too many connections, lock wait
# timeout, deadlock, cannot connect, gone away, lost connection
REJECTED = frozenset({1048, 1264, 1292, 1366, 1406, 3140, 4025})  # NULL in NOT NULL, out of
# range, bad datetime, bad string value, too long, invalid JSON (MySQL), CHECK failed (MariaDB)
ACCESS_DENIED, NO_DATABASE, NO_DB_ACCESS, NO_TABLE_ACCESS = 1045, 1049, 1044, 1142
SSL_CONNECTION_ERROR = 2026  # PyMySQL: TLS required and the server offers none
URL_SETTING = "KUBEVENTS_MYSQL_URL (or the pipeline's mysql.url)"


def error_number(exc: BaseException) -> int | None:
    """The server's (or PyMySQL's client-side 2xxx) error number, if the error carries one."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    args: tuple[object, ...] = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) and args[0] > 0 else None


def server_reason(exc: BaseException) -> str:
    """``MySQL error N: message`` on one line."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    args: tuple[object, ...] = getattr(orig, "args", ())
    message = " ".join(str(args[1] if len(args) > 1 else orig).split())
    number = error_number(exc)
    if number:
        return f"MySQL error {number}: {message}"
    # PyMySQL's InterfaceError(0, ''): a connection it had already closed after an error.
    return f"MySQL connection unusable ({type(orig).__name__}{': ' + message if message else ''})"


def classify(exc: BaseException) -> TransientError | Rejected | None:
    """What the pipeline should do with a failed write; None: not foreseen, let it propagate."""
    number = error_number(exc)
    if number in TRANSIENT:
        return TransientError(server_reason(exc))
    if number in REJECTED:
        return Rejected(server_reason(exc))
    if isinstance(exc, PoolTimeout):  # every connection busy for pool_timeout
        return TransientError(f"no free MySQL connection: {exc}")
    if isinstance(exc, DBAPIError) and (exc.connection_invalidated or number is None):
        # A connection-level failure without a server number (PyMySQL's InterfaceError(0, '')
        # on a socket it already closed, a reset during the handshake).
        return TransientError(server_reason(exc))
    return None


def user_error(exc: BaseException, url: URL, tls: mysql_tls.TLS | None = None) -> UserError | None:
    """A start-up failure the user must fix, as one line saying what to set."""
    number = error_number(exc)
    where = f"{url.host}:{url.port or 3306}"
    if number == ACCESS_DENIED:
        # The server says the same to a user created REQUIRE SSL (or X509) who came without TLS
        # (or without a client certificate): say which settings those need, unless all are set.
        complete = tls is not None and tls.mode == "required" and tls.cert is not None
        return UserError(
            f"MySQL at {where} refused user {url.username!r} ({server_reason(exc)}): check the user"
            f" and password in {URL_SETTING}"
            + (
                ""
                if complete
                else "; a user created REQUIRE SSL needs KUBEVENTS_MYSQL_SSL_MODE=required, one"
                " created REQUIRE X509 also KUBEVENTS_MYSQL_SSL_CERT and KUBEVENTS_MYSQL_SSL_KEY"
            )
        )
    if number == SSL_CONNECTION_ERROR:
        return UserError(
            f"MySQL at {where} offers no TLS, and the settings require it: enable TLS on the"
            f" server, or set {mysql_tls.setting('ssl_mode')} to preferred or disabled"
        )
    if tls is not None and isinstance(exc, DBAPIError) and exc.orig is not None:
        mapped = mysql_tls.handshake_error(exc.orig, tls, where)
        if mapped is not None:
            return mapped
    if number == NO_DATABASE:
        return UserError(
            f"database {url.database!r} does not exist on {where}: create it (CREATE DATABASE"
            f" {url.database} CHARACTER SET utf8mb4) or name an existing one in {URL_SETTING}"
        )
    if number in (NO_DB_ACCESS, NO_TABLE_ACCESS):
        return UserError(
            f"MySQL user {url.username!r} lacks a privilege on {url.database!r}"
            f" ({server_reason(exc)}): GRANT SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX ON"
            f" {url.database}.* TO the user, or set {URL_SETTING} to a user that has them"
        )
    return None


def sink_url(options: MySQLSinkSettings) -> URL:
    """The URL with PyMySQL as the driver (``mysql://`` would pick MySQLdb, not installed)."""
    if options.url is None:
        raise UserError(f"no MySQL URL: set {URL_SETTING}, e.g. mysql+pymysql://user:pw@host/db")
    try:
        url = make_url(options.url.get_secret_value())
    except ArgumentError:
        raise UserError(
            f"{URL_SETTING} is not a URL like mysql+pymysql://user:pw@host/db"
        ) from None
    if url.get_backend_name() not in ("mysql", "mariadb") or url.get_driver_name() not in (
        "pymysql",
        "mysqldb",  # what a bare mysql:// means to SQLAlchemy
        "mariadb",  # what a bare mariadb:// means
    ):
        raise UserError(f"{URL_SETTING} must be a mysql+pymysql:// URL, not {url.drivername}://")
    if not url.database:
        raise UserError(f"{URL_SETTING} names no database: mysql+pymysql://user:pw@host/DATABASE")
    return url.set(drivername="mysql+pymysql")


def migrate(connection: Connection, table: str, revision: str = "head") -> None:
    """Upgrade ``table`` to ``revision`` with alembic, on ``connection``. The version is kept in
    ``<table>_alembic_version``: never clashes with a user's own alembic_version, and two tables
    of two pipelines in one database each have their own history."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["table"] = table
    with _ALEMBIC:
        command.upgrade(config, revision)


class MySQLSink:
    """Upserts enriched events into ``options.table``; see the module docstring."""

    def __init__(self, options: MySQLSinkSettings):
        if not TABLE_NAME.match(options.table):
            raise UserError(
                f"MySQL table name {options.table!r}: 1-40 letters, digits or _, not starting"
                " with a digit"
            )
        self.options = options
        self._statement = upsert(events_table(options.table))
        self._sql: tuple[str, Callable[[Row], Any]] | None = None  # compiled once connected
        self._engine: Engine | None = None

    async def start(self) -> None:
        url, tls = mysql_tls.resolve(self.options, sink_url(self.options))
        self._engine = create_engine(
            url,
            pool_pre_ping=True,  # a connection the server closed (wait_timeout) is replaced
            pool_size=self.options.pool_size,
            max_overflow=0,  # pool_size is the cap: a write waits for a connection
            connect_args={
                "connect_timeout": self.options.connect_timeout_s,
                "charset": "utf8mb4",  # 4-byte characters (emoji) in messages and names
                "init_command": SESSION_INIT,
                **mysql_tls.ssl_args(tls),
            },
        )
        try:
            await asyncio.to_thread(self._start, self._engine)
        except BaseException as exc:
            await self.stop()  # a start that is retried builds its engine again
            mapped = user_error(exc, url, tls) or classify(exc)
            if mapped is None:
                raise
            raise mapped from None

    def _start(self, engine: Engine) -> None:
        with engine.connect() as conn:
            dialect = cast(MySQLDialect, engine.dialect)
            version = tuple(dialect.server_version_info or ())[:2]
            if version < (MIN_MARIADB if dialect.is_mariadb else MIN_MYSQL):
                name = "MariaDB" if dialect.is_mariadb else "MySQL"
                raise UserError(
                    f"{name} {'.'.join(map(str, version))} is too old: kubevents needs MySQL"
                    " 8.0+ or MariaDB 10.6+"
                )
            self._migrate_locked(conn)
        # The dialect knows the server now (MariaDB's VALUES() or MySQL's row alias).
        self._sql = driver_upsert(self._statement, engine.dialect)

    def _migrate_locked(self, conn: Connection) -> None:
        """Migrate under a named server lock: replicas starting together would otherwise race
        to CREATE the table (and one fail with 1050, table exists)."""
        database = conn.exec_driver_sql("SELECT DATABASE()").scalar()
        key = hashlib.sha1(f"{database}.{self.options.table}".encode()).hexdigest()[:20]
        lock = f"kubevents-migrate-{key}"
        got = conn.execute(
            text("SELECT GET_LOCK(:name, :wait)"), {"name": lock, "wait": MIGRATION_LOCK_WAIT_S}
        ).scalar()
        conn.commit()  # alembic leaves a transaction it did not open to its opener
        if got != 1:
            raise TransientError(f"another kubevents is migrating {database}.{self.options.table}")
        try:
            migrate(conn, self.options.table)
            conn.commit()
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": lock})
            conn.commit()

    async def write(self, events: Sequence[Event]) -> list[Failure]:
        """Upsert ``events``; a record that cannot become a row is a Failure (never retried)."""
        return await write_events(self, events)

    def prepare(self, event: Event) -> Row:
        """The event's row (the pipeline builds the next batch's while this one is written)."""
        try:
            return to_row(event)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise Unwritable(f"not a k8s-event.v1 record: {exc!r}") from exc

    async def write_prepared(self, ready: Sequence[Row]) -> list[Failure]:
        """Upsert rows, collapsed to the newest version per uid.

        One transaction per call: if a later chunk is refused, the earlier ones roll back too and
        ``Rejected`` covers the whole call. The pipeline bisects and writes the halves again, and
        rewriting is idempotent, so committing per chunk would save work only in that rare case.
        """
        await asyncio.to_thread(self._upsert, newest_per_uid(list(ready)))
        return []

    def _upsert(self, rows: list[Row]) -> None:
        assert self._engine is not None and self._sql is not None, "write() before start()"
        sql, parameters = self._sql
        try:
            with self._engine.begin() as conn:
                for chunk in chunks(rows, self.options.chunk_rows):
                    # A list of parameter sets: executemany, one multi-row statement per chunk
                    # (PyMySQL splits it further only past ~1 MB, max_stmt_length).
                    conn.exec_driver_sql(sql, [parameters(row) for row in chunk])
        except SQLAlchemyError as exc:
            mapped = classify(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def stop(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.dispose)
            self._engine = None
