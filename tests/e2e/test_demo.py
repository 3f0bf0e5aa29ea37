"""The demo run, as CI runs it (``make demo ONCE=1``, with ``ISOLATED=1``: the stack is shared):
one round of real activity on the local cluster through ``kubevents run`` and the example
pipelines file, then every sink must hold exactly the events the API server holds (same uids,
same resourceVersions), the simulated kubelet Warnings among them with their repeated counts, and
the search, SQL, counts API and "look further" sections must be printed from real answers.

The comparison itself is checked apart, on made-up holdings: a lost, a stale, a foreign and a
doubled event each make the demo say DIFFERS (and so exit 1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from scripts.demo import Held, Snapshot
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

SIMULATED = {"BackOff", "FailedMount", "Unhealthy"}


def test_make_demo_wires_once_and_isolated() -> None:
    recipe = subprocess.run(
        ["make", "-n", "-o", "venv", "-o", "stack", "demo", "ONCE=1", "ISOLATED=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-m scripts.demo --once --isolated" in recipe
    plain = subprocess.run(
        ["make", "-n", "-o", "venv", "-o", "stack", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-m scripts.demo" in plain and "--once" not in plain


def test_make_demo_once_shows_the_whole_job_and_every_sink_agrees(
    brokers: str, kubeconfig: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--once", "--isolated"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr

    # The three totals (and the Warnings index against the API server's Warnings): equal.
    totals = re.search(
        r"^TOTALS api=(\d+) elasticsearch=(\d+) mysql=(\d+) warnings=(\d+): AGREE$", out, re.M
    )
    assert totals, out
    api, es, mysql, warnings = map(int, totals.groups())
    assert api > 0 and api == es == mysql, totals.group(0)
    assert re.search(rf"kubectl get events -n \S+\s+{api} events \({warnings} Warnings\)", out)
    assert warnings >= len(SIMULATED)
    for sink in ("elasticsearch", "mysql", "warnings"):
        assert re.search(rf"^  {sink}\s.*: equal$", out, re.M), (sink, out)

    # The simulated kubelet Warnings: repeated (count > 1), the same count on every side.
    rows = re.findall(r"^  SIMULATED (\w+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
    assert {r[0] for r in rows} == SIMULATED, out
    for reason, _uid, *counts in rows:
        assert len(set(counts)) == 1 and int(counts[0]) > 1, (reason, counts)
    assert "[SIMULATED kubelet] Warning BackOff" in out

    # Real activity answered by the controllers and the scheduler.
    sql = dict(re.findall(r"^  SQL (\w+)\s+\w+\s+\d+\s+(\d+)$", out, re.M))
    for reason in ("ScalingReplicaSet", "SuccessfulCreate", "Scheduled", "FailedScheduling"):
        assert reason in sql, (reason, out)
    assert int(sql["BackOff"]) == 4  # the demo's plan: BackOff reported four times

    # The full-text search found the simulated Warnings ("failed" is in each of their messages).
    searched = set(re.findall(r"^  SEARCH (\w+)\s+count (\d+)", out, re.M))
    assert {reason for reason, _ in searched} >= SIMULATED, out

    # The counts API's top Warning reasons: the simulated ones counted as the API server
    # counts them (the scheduler's may repeat between the two readings: not compared here).
    top = {
        t[0]: t for t in re.findall(r"^  TOP (\w+)\s+(\d+) occurrences \((=|!=) (\d+)", out, re.M)
    }
    assert set(top) >= SIMULATED, out
    assert all(top[reason][2] == "=" for reason in SIMULATED), top

    for where in ("Elasticsearch: http://", "MySQL:  mariadb -h", "kafka-console-consumer"):
        assert where in out


def held(rv: str) -> Held:
    return Held(rv, "Warning", "BackOff", 1)


@pytest.mark.parametrize(
    ("docs", "total", "problem"),
    [
        ({"a": held("1")}, 1, "1 missing"),
        ({"a": held("1"), "b": held("1")}, 2, "at an older version"),
        ({"a": held("1"), "b": held("2"), "c": held("9")}, 3, "not on the API server"),
        ({"a": held("1"), "b": held("2")}, 3, "written twice"),
    ],
)
def test_the_comparison_catches_a_lost_stale_foreign_or_doubled_event(
    docs: dict[str, Held], total: int, problem: str
) -> None:
    from scripts.demo import Demo

    expected = {"a": "1", "b": "2"}
    snap = Snapshot({"a": held("1"), "b": held("2")}, {"es": (docs, total)}, {"es": expected})
    assert not snap.all_agree()
    assert problem in Demo.difference(docs, total, expected)
    good = Snapshot(snap.api, {"es": ({"a": held("1"), "b": held("2")}, 2)}, {"es": expected})
    assert good.all_agree()
    away = Snapshot(good.api, good.held, good.expected, unanswered={"es": "ConnectionError"})
    assert not away.all_agree()  # a destination that did not answer never counts as agreeing
