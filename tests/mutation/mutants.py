"""The mutation gate's mutants: deliberately broken variants of the code, each paired with the
tests that must fail on it. A test that passes with its guarantee broken proves nothing; the gate
(tests/mutation/gate.py, run by ``make test``) applies each mutant to a copy of the tree, runs only
its paired tests there, and fails when a mutant survives.

A mutant is a literal replacement of text that must occur exactly once in its file
(tests/unit/test_mutants.py checks that on every run, so a refactoring that moves the code fails
fast and says which mutant to update, instead of the gate passing on a no-op mutant).
"""

from __future__ import annotations

from dataclasses import dataclass

CORE = "tests/integration/test_core.py"
BATCHED = "tests/unit/worker/test_batched_delivery.py"
DROPPED = "tests/unit/worker/test_dropped_fetches.py"
SEEK_ALL = """    tps = [tp for tp in consumer.assignment() if streamed(tp.topic)]
    committed = {tp: await consumer.committed(tp) for tp in tps}
    # Nothing committed: the beginning (kubevents reads with auto_offset_reset=earliest).
    fresh = [tp for tp, offset in committed.items() if offset is None or offset < 0]
    if fresh:
        committed.update(await consumer.beginning_offsets(fresh))
    # From here on no await: no fetch is returned between the seeks and the state they set.
    assigned = consumer.assignment()
    committed = {tp: offset for tp, offset in committed.items() if tp in assigned}
    for tp, offset in committed.items():
        consumer.seek(tp, offset)
"""
SEEK_TO_COMMITTED = """    committed = dict(await consumer.seek_to_committed())
    for tp, offset in list(committed.items()):
        if not streamed(tp.topic):
            del committed[tp]
        elif offset is None or offset < 0:
            await consumer.seek_to_beginning(tp)
            committed[tp] = await consumer.position(tp)
        elif offset == 0:
            consumer.seek(tp, 0)
"""
HANDLE = "                await self._handle(preparing, messages, prepared)\n"
ACK = """                for message in messages:
                    self.app.consumer.ack(message)  # lets Faust commit up to it
"""


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str  # the guarantee it breaks
    path: str  # file to change, relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail on it
    # Its tests stop or disturb a shared server, or time a hand-over that a busy CPU stretches:
    # run after the others, one at a time (the rest run two at a time).
    alone: bool = False
    env: tuple[tuple[str, str], ...] = ()  # set for its tests (the fault suite: which faults)


MUTANTS: list[Mutant] = [
    Mutant(
        name="ack-before-publish",
        why="records are acked (so committed) before their outputs are published: a crash in "
        "between loses them",
        path="app/worker/batch_loop.py",
        old=HANDLE + ACK,
        new=ACK + HANDLE,
        tests=(f"{CORE}::test_sigkill_mid_stream_loses_nothing",),
    ),
    Mutant(
        name="count-row-offset-guard-removed",
        why="a batch decided again after a crash between count rows and dedupe rows adds its "
        "increments twice",
        path="tables/counts.py",
        old="                if offset > entry[2]:\n",
        new="                if True:\n",
        tests=(f"{CORE}::test_worker_dying_between_count_rows_and_dedupe_rows_counts_exactly",),
    ),
    Mutant(
        name="faust-channel-hand-over",
        why="the historic loss: batches handed to the agent through a Faust channel, whose queue "
        "Faust clears when it resumes the flow after a rebalance's seek",
        path="app/worker/batch_loop.py",
        old="        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=2)\n",
        new="        self.queue: Any = app.channel(maxsize=2)\n",
        tests=(
            f"{CORE}::test_workers_joining_and_leaving_under_traffic_lose_nothing_and_count_once"
            "[slow-agent-and-seek]",
        ),
    ),
    Mutant(
        name="faust-handed-over-before-seek",
        why="fix 5 undone: records read after a rebalance and before its seek are handed over "
        "ahead of the records from the committed offset, whose count increments are then skipped",
        path="app/worker/batched_delivery.py",
        old="            handed = state.seeks == self.seeks and state.unsought is None\n",
        new="            handed = state.seeks == self.seeks\n",
        tests=(f"{BATCHED}::test_nothing_is_handed_over_between_an_assignment_and_its_seek",),
    ),
    Mutant(
        name="faust-recovery-seek-uncounted",
        why="fix 7 undone: a changelog record read before the recovery's seek of its partition "
        "moves the read offset past the records the seek reads again; the recovery waits forever",
        path="app/worker/faust_fixes.py",
        old="            state.sought[tp] = state.sought.get(tp, 0) + 1\n",
        new="            pass\n",
        tests=(
            f"{BATCHED}::test_a_record_read_before_a_recovery_seek_does_not_move_the_read_offset"
            "_it_set",
        ),
    ),
    Mutant(
        name="faust-seek-awaits-between-partitions",
        why="fix 6 undone: aiokafka's seek_to_committed awaits between partitions' seeks, and a "
        "fetch returned in between, still held by fix 5, is dropped with nothing to seek it back",
        path="app/worker/faust_fixes.py",
        old=SEEK_ALL,
        new=SEEK_TO_COMMITTED,
        tests=(f"{BATCHED}::test_no_fetch_is_returned_between_the_seeks_and_the_end_of_the_hold",),
    ),
    Mutant(
        name="faust-dropped-changelog-fetch-lost",
        why="fix 9 undone: changelog records a fetch returned and Faust's getmany dropped (a "
        "pause, a rebalance) are never read again; a recovery waiting for them waits forever",
        path="app/worker/dropped_fetches.py",
        old="    if again:\n",
        new="    if not again:\n",
        tests=(
            f"{DROPPED}::test_a_changelog_paused_while_fetched_is_read_again_from_its_first_dropped"
            "_record",
            f"{DROPPED}::test_records_after_a_generation_change_are_dropped_and_changelogs_read"
            "_again",
        ),
    ),
    Mutant(
        name="faust-dropped-fetch-overrides-recovery-seek",
        why="fix 9 seeks a changelog back to a record of a fetch older than the recovery's own "
        "seek of it: what lies between that seek and the record is never read",
        path="app/worker/dropped_fetches.py",
        old="            if tp not in assigned or state.sought.get(tp, 0) != sought:\n",
        new="            if tp not in assigned:\n",
        tests=(
            f"{DROPPED}::test_a_partition_the_recovery_sought_since_the_fetch_is_left_where_the"
            "_seek_put_it",
        ),
    ),
]

# Producer (issue #10): leader election and re-lists.
PRODUCER_TESTS = "tests/integration/test_producer.py"  # own name: this block stands alone
ELECTION_START = """        producer.leading = elector.leading
        producer._thread("lease", lambda: elector.run(stop_all) if elector else None)
    else:
        producer.start_sources()
"""
LIST_SINK = """                if records:
                    self.sink(records)
                    LISTED.inc(len(records))
"""
MUTANTS += [
    Mutant(
        name="follower-publishes",
        why="every replica lists, watches and publishes from its start, leader or not, and "
        "without the leadership check: two replicas publish everything twice",
        path="app/producer/service.py",
        old=ELECTION_START,
        new=ELECTION_START.replace("        producer.leading = elector.leading\n", "").replace(
            "    else:\n        producer.start_sources()\n", "    producer.start_sources()\n"
        ),
        tests=(f"{PRODUCER_TESTS}::test_two_replicas_publish_once_and_fail_over_within_the_lease",),
        alone=True,
    ),
    Mutant(
        name="leader-keeps-publishing-after-losing-lease",
        why="the right to publish is is_leader alone, not a renewal recent enough: a leader "
        "resumed after a freeze publishes what its watch buffered until its late elector steps "
        "down, after the other replica took over",
        path="app/kube/election.py",
        old="            self.is_leader and self.clock() - self._renewed_from < self.duration"
        " * LEADING_FRACTION\n",
        new="            self.is_leader\n",
        tests=(f"{PRODUCER_TESTS}::test_frozen_leader_publishes_nothing_once_it_lost_the_lease",),
        alone=True,
    ),
    Mutant(
        name="relist-publishes-nothing",
        why="LIST pages are read and counted but never handed to Kafka: a (re-)list after a "
        "restart or an expired continue token publishes nothing, only the watch does",
        path="app/producer/source.py",
        old=LIST_SINK,
        new=LIST_SINK.replace("                    self.sink(records)\n", ""),
        tests=(
            f"{PRODUCER_TESTS}::test_list_continue_token_expired_mid_list_lists_again_without_loss",
            f"{PRODUCER_TESTS}::test_sigkill_mid_list_of_a_backlog_then_restart_loses_nothing",
        ),
        alone=True,
    ),
]

# The one Kafka batch writer (app/kafka/writer.py), under every path that writes to Kafka.
MUTANTS += [
    Mutant(
        name="kafka-orphaned-batches-awaited",
        why="a write awaits its batches' futures alone: a batch left in a producer whose sender "
        "stopped (cancelled while Kafka answered NotEnoughReplicas) is never resolved nor sent "
        "again, and its records are lost (a repeat lost in a Kafka cluster restart)",
        path="app/kafka/writer.py",
        old="        metadata = await acknowledged(producer, [future for future, _ in sent])\n",
        new="        metadata = await asyncio.gather(*(future for future, _ in sent))\n",
        tests=(
            "tests/integration/test_kafka_writer.py"
            "::test_records_left_behind_by_a_stopped_sender_are_sent_again",
        ),
    ),
]

# The fault suite (tests/e2e/test_faults.py), one fault of it per mutant to keep the gate short.
E2E = "tests/e2e/test_faults.py::test_nothing_lost_doubled_or_miscounted_under_each_fault"
MUTANTS += [
    Mutant(
        name="e2e-takeover-lists-nothing",
        why="the replica taking over after the leader's death publishes nothing of its LIST, "
        "only what its watch sees next: what the dead leader had not published is lost",
        path="app/producer/source.py",
        old=LIST_SINK,
        new=LIST_SINK.replace("                    self.sink(records)\n", ""),
        tests=(E2E,),
        env=(("KUBEVENTS_E2E_FAULTS", "producer"),),
    ),
]

# Elasticsearch sink: each guarantee of app/sinks/elasticsearch.py and of its indices' module,
# against Elasticsearch 8 (the [es9] variants run the same code against the other server; one
# server keeps the gate short).
ES_SINK = "app/sinks/elasticsearch.py"
ES_INDICES = "app/sinks/elasticsearch_indices.py"
ES = "tests/integration/test_sink_elasticsearch.py"
ES_STREAM = f"{ES}::test_stream_reads_back_exactly_newest_version_once_per_uid[es8]"
ES_REJECTED = (
    f"{ES}::test_a_rejected_record_is_a_failure_with_elasticsearchs_reason_and_the_rest_is_written"
    "[es8]"
)
MUTANTS += [
    Mutant(
        name="es-no-external-version",
        why="documents are indexed without the resourceVersion as external version: a late "
        "older version overwrites the newer one",
        path=ES_SINK,
        old='        "version": external_version(event),\n        "version_type": "external_gte",',
        new="       ",
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-fallback-version-constant",
        why="events with a non-numeric resourceVersion all get the same version: the last one "
        "written wins, older or not",
        path=ES_SINK,
        old="    return micros * COUNT_SLOTS + min(max(slot, 0), COUNT_SLOTS - 1)\n",
        new="    return 1\n",
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-stale-409-is-a-failure",
        why="a 409 (a newer version is already there) is reported as a failure to retry: a "
        "late older version or a redelivery blocks the pipeline",
        path=ES_SINK,
        old="    if status == 409:\n",
        new="    if False:\n",
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-index-by-last-seen",
        why="the daily index follows last_seen: a repeat on the next day puts a second "
        "document of the same uid in another index",
        path=ES_SINK,
        old='(event.get("first_seen"), created, event.get("last_seen"))',
        new='(event.get("last_seen"), created, event.get("first_seen"))',
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-no-date-clamp",
        why="first_seen 0001-01-01 (never set) is believed: an index for year 1",
        path=ES_SINK,
        old="EARLIEST = datetime(2014, 6, 1, tzinfo=UTC)",
        new="EARLIEST = datetime(1, 1, 1, tzinfo=UTC)",
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-dates-not-lenient",
        why="date_nanos without ignore_malformed: a document with first_seen 0001-01-01 is "
        "rejected instead of kept",
        path=ES_INDICES,
        old='DATE: dict[str, Any] = {"type": "date_nanos", "ignore_malformed": True}',
        new='DATE: dict[str, Any] = {"type": "date_nanos"}',
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-labels-as-object",
        why="labels mapped as a plain object under dynamic: false: nothing in them is searchable",
        path=ES_INDICES,
        old='        "labels": {"type": "flattened", "ignore_above": 1024},\n',
        new='        "labels": {"type": "object"},\n',
        tests=(ES_STREAM,),
    ),
    Mutant(
        name="es-rejection-retried",
        why="a mapping rejection is reported as retryable: the record blocks the pipeline "
        "forever instead of going to the dead-letter topic",
        path=ES_SINK,
        old='        return "rejected", reason\n',
        new='        return "retry", reason\n',
        tests=(ES_REJECTED,),
    ),
    Mutant(
        name="es-failure-index-of-the-request",
        why="a failure names the record's position in its bulk request, not in the batch: with "
        "several requests, the wrong record is dead-lettered",
        path=ES_SINK,
        old="            for (i, _), item in zip(chunk, items, strict=True)\n",
        new="            for i, (_, item) in enumerate(zip(chunk, items, strict=True))\n",
        tests=(ES_REJECTED,),
    ),
    Mutant(
        name="es-template-only-when-missing",
        why="the template is installed only when absent: an upgraded kubevents keeps the old one",
        path=ES_SINK,
        old="            await self.client.indices.put_index_template(",
        new="            if not await self.client.indices.exists_index_template(\n"
        "                name=template_name(self.options.index)\n"
        "            ):\n"
        "              await self.client.indices.put_index_template(",
        tests=(f"{ES}::test_the_template_is_installed_again_on_every_start[es8]",),
    ),
    Mutant(
        name="es-retention-matches-prefixes",
        why="retention takes any index ending in a date under the prefix: another pipeline's "
        "<index>-x-YYYY.MM.DD is deleted",
        path=ES_INDICES,
        old="    match = _DAILY.match(name, len(index))\n",
        new="    match = _DAILY.search(name, len(index))\n",
        tests=(
            f"{ES}::test_retention_deletes_only_this_sinks_daily_indices_older_than_the_limit[es8]",
        ),
    ),
    Mutant(
        name="es-start-waits-past-its-timeout",
        why="start() keeps waiting for an unreachable cluster past startup_timeout_s",
        path=ES_SINK,
        old="            if left <= 0:\n",
        new="            if left <= -10:\n",
        tests=(f"{ES}::test_start_against_a_closed_port_is_transient_within_the_timeout",),
    ),
]

# MySQL sink: the version guard, one statement per chunk, one transaction per write, the
# schema's characters and sizes, migrations that never race.
MYSQL_TESTS = "tests/integration/test_sink_mysql.py"
MYSQL_UNIT = "tests/unit/sinks/test_mysql.py"
MYSQL_STREAM = (
    f"{MYSQL_TESTS}::test_a_stream_written_out_of_order_and_twice_leaves_exactly_the_newest_rows"
)
ROWS = "app/sinks/mysql_rows.py"
GUARD_LAST = (
    '    sets.append(("guard_version", func.greatest(old.guard_version, new.guard_version)))\n'
)
CHUNK_EXECUTE = (
    "                    conn.exec_driver_sql(sql, [parameters(row) for row in chunk])\n"
)
MIGRATION_LOCK_TAKEN = (
    "        conn.commit()  # alembic leaves a transaction it did not open to its opener\n"
)
ONE_TRANSACTION = (
    """            with self._engine.begin() as conn:
                for chunk in chunks(rows, self.options.chunk_rows):
                    # A list of parameter sets: executemany, one multi-row statement per chunk
                    # (PyMySQL splits it further only past ~1 MB, max_stmt_length).
"""
    + CHUNK_EXECUTE
)
MUTANTS += [
    Mutant(
        name="mysql-no-version-guard",
        why="every column takes the incoming version: a late older version (a redelivery, a "
        "replay) moves count, last_seen and message backwards",
        path=ROWS,
        old="case((newer, new[name]), else_=old[name])",
        new="new[name]",
        tests=(MYSQL_STREAM,),
    ),
    Mutant(
        name="mysql-guard-assigned-first",
        why="guard_version moves before the columns that compare against it (the SET-order "
        "trap). With >= the outcome happens to be the same (v >= max(g, v) iff v >= g), so only "
        "the rendered order catches it; with > nothing would ever move again",
        path=ROWS,
        old=GUARD_LAST,
        new=GUARD_LAST.replace("sets.append(", "sets.insert(0, "),
        tests=(f"{MYSQL_UNIT}::test_guard_column_is_assigned_last_and_guards_every_other",),
    ),
    Mutant(
        name="mysql-first-seen-follows-newest",
        why="first_seen is taken from the newest version instead of the earliest ever written",
        path=ROWS,
        old="func.least(old.first_seen, new.first_seen)",
        new="case((newer, new.first_seen), else_=old.first_seen)",
        tests=(MYSQL_STREAM,),
    ),
    Mutant(
        name="mysql-collapse-keeps-oldest",
        why="a batch holding two versions of one uid writes the older one",
        path=ROWS,
        old='row["guard_version"] >= kept["guard_version"]',
        new='row["guard_version"] <= kept["guard_version"]',
        tests=(MYSQL_STREAM,),
    ),
    Mutant(
        name="mysql-no-fallback-guard",
        why="a resourceVersion that is no number guards with 0: any late version overwrites",
        path=ROWS,
        old="version if version is not None else fallback_version(last_seen)",
        new="version if version is not None else 0",
        tests=(MYSQL_STREAM,),
    ),
    Mutant(
        name="mysql-statement-per-row",
        why="the chunk is sent row by row (30-40x slower), as PyMySQL silently does for any "
        "statement its executemany cannot batch",
        path="app/sinks/mysql.py",
        old=CHUNK_EXECUTE,
        new="                    for row in chunk:\n"
        "                        conn.exec_driver_sql(sql, parameters(row))\n",
        tests=(f"{MYSQL_TESTS}::test_each_chunk_is_one_multi_row_statement",),
    ),
    Mutant(
        name="mysql-function-among-values",
        why="a function among the VALUES: PyMySQL's executemany no longer batches the statement",
        path=ROWS,
        old="    stmt = mysql.insert(table)\n",
        new="    stmt = mysql.insert(table).values(observed_at=func.utc_timestamp())\n",
        tests=(f"{MYSQL_TESTS}::test_each_chunk_is_one_multi_row_statement",),
    ),
    Mutant(
        name="mysql-commit-per-chunk",
        why="chunks before a rejected one stay committed: the write is no longer all or nothing",
        path="app/sinks/mysql.py",
        old=ONE_TRANSACTION,
        new=ONE_TRANSACTION.replace(".begin() as conn", ".connect() as conn")
        + "                    conn.commit()\n",
        tests=(f"{MYSQL_TESTS}::test_a_value_too_long_is_rejected_with_the_servers_reason",),
    ),
    Mutant(
        name="mysql-table-without-utf8mb4",
        why="the table takes the database's character set (latin1 by MariaDB's compiled "
        "default): emoji and most non-Latin text are refused or mangled",
        path="app/sinks/mysql_migrations/versions/v0001_events_table.py",
        old='        mysql_charset="utf8mb4",\n        mysql_collate="utf8mb4_bin",\n',
        new="",  # both: the collation alone implies its character set
        tests=(MYSQL_STREAM,),
    ),
    Mutant(
        name="mysql-message-text",
        why="message as TEXT (64 KB): a 30 000-character message of 4-byte characters is refused",
        path="app/sinks/mysql_migrations/versions/v0001_events_table.py",
        old='sa.Column("message", mysql.MEDIUMTEXT, nullable=False)',
        new='sa.Column("message", sa.Text, nullable=False)',
        tests=(MYSQL_STREAM,),
    ),
    Mutant(
        name="mysql-server-sql-mode",
        why="the session keeps the server's sql_mode: on a non-strict server a value too long is "
        "truncated silently instead of refused",
        path="app/sinks/mysql.py",
        old='                "init_command": SESSION_INIT,\n',
        new="",
        tests=(f"{MYSQL_TESTS}::test_a_value_too_long_is_rejected_with_the_servers_reason",),
    ),
    Mutant(
        name="mysql-no-migration-lock",
        why="replicas starting together all migrate at once and race to create the same tables "
        "and indexes (the named lock is released as soon as it is taken)",
        path="app/sinks/mysql.py",
        old=MIGRATION_LOCK_TAKEN,
        new=MIGRATION_LOCK_TAKEN
        + '        conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": lock})\n',
        tests=(f"{MYSQL_TESTS}::test_replicas_starting_together_migrate_once",),
    ),
    Mutant(
        name="mysql-alembic-unserialised",
        why="two sinks of one process migrate at once through alembic's module-level context: "
        "one runs its revisions on the other's connection",
        path="app/sinks/mysql.py",
        old="    with _ALEMBIC:\n        command.upgrade(config, revision)\n",
        new="    command.upgrade(config, revision)\n",
        tests=(f"{MYSQL_TESTS}::test_sinks_in_one_process_migrate_one_at_a_time",),
    ),
    Mutant(
        name="mysql-tls-ca-not-verified",
        why="a CA given is loaded but the server's certificate is not checked against it (what"
        " PyMySQL's ssl_ca alone does): any certificate, a man in the middle's too, is accepted",
        path="app/sinks/mysql_tls.py",
        old="    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_cert else ssl.CERT_NONE\n",
        new="    ctx.check_hostname = False\n    ctx.verify_mode = ssl.CERT_NONE\n",
        tests=(
            f"{MYSQL_TESTS}::test_a_ca_that_did_not_sign_the_server_is_a_user_error_naming_it",
            "tests/unit/sinks/test_mysql_tls.py::test_required_alone_verifies_with_the_system_cas",
        ),
    ),
    Mutant(
        name="mysql-tls-disabled-ignored",
        why="ssl_mode=disabled (kube-eventer's tls=false) still encrypts when the server offers"
        " TLS: the setting does nothing",
        path="app/sinks/mysql_tls.py",
        old='        return {"ssl_disabled": True}\n',
        new="        return {}\n",
        tests=(f"{MYSQL_TESTS}::test_with_the_ca_the_sink_writes_over_verified_tls",),
    ),
]

# The sink pipeline around every sink (app/sinks/pipeline.py) and its commit path.
PIPELINE = "app/sinks/pipeline.py"
PIPELINE_UNIT = "tests/unit/sinks/test_pipeline.py"
SINK_TESTS = "tests/integration/test_sinks.py"


MUTANTS += [
    Mutant(
        name="sink-ack-before-write",
        why="a sink pipeline's records are acked (so committed) before they are written: a worker "
        "killed while its destination is down loses the batch it held",
        path="app/worker/batch_loop.py",
        old=HANDLE + ACK,
        new=ACK + HANDLE,
        tests=(
            f"{SINK_TESTS}::test_a_sink_worker_killed_while_its_destination_is_away_loses_nothing",
        ),
    ),
    Mutant(
        name="sink-rejection-fails-its-batch",
        why="one record the destination refuses sends its whole batch to the dead-letter topic",
        path=PIPELINE,
        old="            refused = [(pending[f.index], f.reason)"
        " for f in failures if not f.retry]\n",
        new="            refused = [(item, failures[0].reason) for item in pending] if any(\n"
        "                not f.retry for f in failures) else []\n",
        tests=(
            f"{PIPELINE_UNIT}::test_a_record_refused_for_good_is_dead_lettered_and_the_rest_written",
            f"{SINK_TESTS}::test_a_sink_worker_killed_between_write_and_commit_leaves_no_gap_and_"
            "no_duplicate[elasticsearch]",
        ),
    ),
    Mutant(
        name="sink-no-bisection",
        why="a batch refused as a whole (a multi-row statement) is dead-lettered whole instead of "
        "bisected down to the record at fault",
        path=PIPELINE,
        old="                if len(pending) == 1:\n",
        new="                if True:\n",
        tests=(
            f"{PIPELINE_UNIT}::test_a_batch_refused_as_a_whole_is_bisected_down_to_the_poison_records",
        ),
    ),
    Mutant(
        name="sink-transient-skipped",
        why="a destination that is away makes the pipeline skip the batch instead of waiting",
        path=PIPELINE,
        old="                await self._sleep(self._backoff(attempt, exc.retry_after))\n"
        "                continue\n",
        new="                return\n",
        tests=(
            f"{PIPELINE_UNIT}::test_a_destination_away_is_retried_in_place_with_growing_capped_backoff",
        ),
    ),
]
