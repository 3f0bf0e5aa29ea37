"""The benchmark scripts run, at a tiny size, as a smoke check (``make test`` runs them once):
each exits 0, prints its figures and saw every record arrive (the scripts themselves exit 1
when a record is missing). The figures are not asserted: at this size they mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.conftest import ROOT


def run_bench(module: str, *args: str, timeout: float = 240) -> tuple[str, dict[str, Any]]:
    """Runs ``python -m MODULE ARGS``; (its output, the JSON summary it prints last)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, f"{module} exited {result.returncode}:\n{out}\n{result.stderr}"
    start = out.rindex("\n{\n") + 1 if "\n{\n" in out else out.index("{\n")
    return out, json.loads(out[start:])


def test_bench_producer_runs_and_every_event_reaches_kafka() -> None:
    events = 300
    out, summary = run_bench(
        "bench.producer", "--events", str(events), "--rounds", "1", "--page-size", "50"
    )
    assert f"created {events} events" in out
    (round_line,) = [line for line in out.splitlines() if line.startswith("round 1: ")]
    round_ = json.loads(round_line.removeprefix("round 1: "))
    assert round_["events"] == round_["records_in_topic"] == events
    assert summary["events"] == events and summary["rounds"] == 1
    assert summary["all_records_in_topic"] is True
    for figure in (
        "bare_events_per_s_median",
        "producer_events_per_s_median",
        "producer_events_per_s_wall_median",
        "ratio_of_medians",
        "peak_rss_mib_max",
    ):
        assert figure in summary, figure


def test_bench_core_runs_and_every_record_is_enriched() -> None:
    """bench.core runs the bare loop, bench/faust_floor.py (Faust's own stream path) and a core
    worker over the same records."""
    messages = 400
    out, summary = run_bench("bench.core", "--messages", str(messages))
    assert f"preloaded {messages} raw messages" in out
    assert summary["messages"] == summary["enriched_records"] == messages
    assert summary["all_published"] is True
    for figure in (
        "bare_loop_events_per_s_after_first",
        "core_events_per_s_after_first",
        "core_events_per_s_wall",
        "faust_floor_events_per_s",
        "ratio_after_first",
        "core_peak_rss_mib",
    ):
        assert figure in summary, figure


def test_bench_sinks_runs_and_every_document_and_row_is_written() -> None:
    events = 1000
    out, summary = run_bench("bench.sinks", "--events", str(events))
    assert f"preloaded {events} enriched events" in out
    unique = summary["unique_events"]
    assert summary["events"] == events and 0 < unique < events
    assert summary["elasticsearch"]["documents"] == unique
    assert summary["mysql"]["rows"] == unique
    for sink in ("elasticsearch", "mysql"):
        assert "ratio" in summary[sink] and summary[sink]["pipeline_peak_rss_mib"] > 0


def test_bench_e2e_runs_and_both_sinks_hold_exactly_the_events(tmp_path: Path) -> None:
    """bench.e2e runs the core and both sink workers on a preloaded raw topic, the bare stages on
    the same records, then the producer, core and sinks under a paced generator of real Events
    (a few seconds at a low rate here)."""
    events, rate, duration, warmup = 400, 20, 3, 1
    trace = tmp_path / "trace.jsonl"
    out, summary = run_bench(
        "bench.e2e",
        "--events",
        str(events),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--trace",
        str(trace),
        timeout=420,
    )
    for header in ("command: ", "machine: ", "versions: "):
        assert header in out, header
    assert summary["machine"]["cores"] > 0 and summary["versions"]["kafka"] != "unknown"
    a = summary["throughput"]
    assert a["raw_envelopes"] == events and 0 < a["events"] < events  # some with two versions
    # Each event once in each destination, with its final count (the sums of counts agree).
    assert a["elasticsearch_documents"] == a["mysql_rows"] == a["events"]
    assert a["elasticsearch_count_sum"] == a["mysql_count_sum"] == events
    assert set(a["bare_events_per_s"]) == {"decode_loop", "async_streaming_bulk", "executemany"}
    for figure in ("e2e_events_per_s", "ratio_to_slowest_bare", "slowest_bare_stage"):
        assert figure in a, figure
    assert set(a["processes"]) == {"core", "sink-es", "sink-mysql"}
    b = summary["latency"]
    assert b["created"] == rate * duration and b["create_failures"] == 0
    # The warm-up's events are written and checked too, but measured apart.
    assert b["warmup_events"] == rate * warmup
    total = b["created"] + b["warmup_events"]
    assert b["elasticsearch_documents"] == b["mysql_rows"] == b["expected_events"] == total
    assert b["never_visible"] == {"elasticsearch": 0, "mysql": 0}
    for sink in ("elasticsearch_searchable", "mysql_present", "both"):
        assert b["latency_s"][sink]["n"] == b["created"], sink
        assert {"p50", "p95", "p99"} <= set(b["latency_s"][sink]), sink
    for sink in ("elasticsearch_searchable", "mysql_present"):
        assert b["warmup_latency_s"][sink]["n"] == b["warmup_events"], sink
    assert "s of warm-up before" in out
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == total and sum(line["warmup"] for line in lines) == b["warmup_events"]
    assert all(line["elasticsearch"] >= line["created"] for line in lines)
    assert set(b["processes"]) == {"producer", "core", "sink-es", "sink-mysql"}
    # Each sink's own histograms: every batch written at least once, its delay counted once.
    for name in ("sink-es", "sink-mysql"):
        timings = b["sink_timings"][name]
        assert timings["write_seconds"]["n"] >= timings["delay_seconds"]["n"] >= 1, name
        assert timings["delay_seconds"]["mean_ms"] > 0 and timings["write_seconds"]["mean_ms"] > 0
    for p in [*a["processes"].values(), *b["processes"].values()]:
        assert p["peak_rss_mib"] > 0 and p["cpu_s"] > 0
