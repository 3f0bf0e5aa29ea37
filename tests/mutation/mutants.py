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
HANDLE = "                await self.handler.handle(messages)\n"
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
    ),
]
