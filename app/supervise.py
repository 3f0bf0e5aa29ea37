"""``kubevents run``: every process the settings declare, on one host, each supervised.

Logstash's one-instance experience with the process isolation Logstash does not have: the
producer(s), the core worker(s) and each sink pipeline's worker(s) run as child processes of this
one (``kubevents produce`` / ``kubevents worker --pipeline ID``), each with its own HTTP port, so
one destination being slow or down never stalls another (each pipeline is its own consumer
group). A child that dies is started again after a capped, doubling backoff (reset once it has
run a minute), and said so in the log; a status line per process (pid, restarts, its /readyz
answer) is printed every ``run.status_interval_s``; Ctrl-C or SIGTERM stops them all (SIGTERM,
then SIGKILL after 20 s). In a cluster each stays its own Deployment/StatefulSet instead.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from app.settings import Settings

log = logging.getLogger("kubevents.run")

STABLE_S = 60.0  # a child that ran this long starts its next restart from the shortest backoff
GRACE_S = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = 0.0
    next_start: float = 0.0
    backoff: float = 1.0
    last_exit: int | None = None

    def ready(self) -> str:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                return str(json.load(resp).get("reason", "ready"))
        except urllib.error.HTTPError as exc:
            try:
                return "not ready: " + str(json.load(exc).get("reason", exc.code))
            except ValueError:
                return f"not ready: HTTP {exc.code}"
        except (OSError, ValueError):
            return "no answer"


def plan(
    settings: Settings, config: str | None, sinks: list[str], only: list[str] | None = None
) -> list[Child]:
    """The processes to run: producers, core workers, then each sink pipeline's workers."""
    base = [sys.executable, "-m", "app.cli", *(["--config", config] if config else [])]
    sink_flags = [arg for uri in sinks for arg in ("--sink", uri)]
    data = settings.worker.data_dir
    run = settings.run
    port = run.base_port
    children: list[Child] = []
    wanted = set(only or [])

    def add(name: str, argv: list[str], env: dict[str, str], group: str) -> None:
        nonlocal port
        if wanted and group not in wanted:
            return
        children.append(Child(name, argv, env, port))
        port += 1

    for i in range(run.producer_replicas):
        env = {"KUBEVENTS_PRODUCER_HTTP_PORT": str(port)}
        add(f"producer-{i}", [*base, "produce"], env, "producer")
    groups = [("core", "core", run.core_replicas)]
    groups += [(p.id, p.id, p.replicas) for p in settings.sink_pipelines()]
    for pipeline, group, replicas in groups:
        for i in range(replicas):
            env = {
                "KUBEVENTS_WORKER_WEB_PORT": str(port),
                # A RocksDB store is one process's: each worker its own directory.
                "KUBEVENTS_WORKER_DATA_DIR": str(data / f"{pipeline}-{i}"),
            }
            argv = [*base, "worker", "--pipeline", pipeline, *sink_flags]
            add(f"{pipeline}-{i}", argv, env, group)
    return children


def _start(child: Child) -> None:
    data_dir = child.env.get("KUBEVENTS_WORKER_DATA_DIR")
    if data_dir:  # Faust creates only the last level
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    child.proc = subprocess.Popen(child.argv, env={**os.environ, **child.env})
    child.started = time.monotonic()
    log.info(
        "started %s (pid %d, port %d)",
        child.name,
        child.proc.pid,
        child.port,
        extra={"child": child.name, "pid": child.proc.pid, "port": child.port},
    )


def _reap(child: Child, backoff_max: float, now: float) -> None:
    """A child that exited: schedule its restart."""
    assert child.proc is not None
    code = child.proc.returncode
    ran = now - child.started
    child.backoff = 1.0 if ran >= STABLE_S else min(backoff_max, child.backoff * 2)
    child.next_start = now + child.backoff
    child.restarts += 1
    child.last_exit = code
    log.warning(
        "%s (pid %d) exited with status %s after %.0fs; restarting in %.0fs",
        child.name,
        child.proc.pid,
        code,
        ran,
        child.backoff,
        extra={"child": child.name, "pid": child.proc.pid, "status": code},
    )
    child.proc = None


def status_lines(children: list[Child]) -> list[str]:
    lines = []
    for c in children:
        if c.proc is None:
            state = f"restarting (last exit {c.last_exit})"
            pid = "-"
        else:
            state = c.ready()
            pid = str(c.proc.pid)
        lines.append(f"{c.name:<24} pid {pid:<8} port {c.port:<6} restarts {c.restarts:<3} {state}")
    return lines


def _stop(children: list[Child]) -> None:
    running = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for c in running:
        assert c.proc is not None
        c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for c in running:
        assert c.proc is not None
        try:
            c.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs: killed", c.name, GRACE_S)
            c.proc.kill()
            c.proc.wait()


def run(
    settings: Settings, config: str | None, sinks: list[str], only: list[str] | None = None
) -> int:
    children = plan(settings, config, sinks, only)
    if not children:
        print("kubevents run: nothing to run (no pipeline declared, no replicas)", file=sys.stderr)
        return 2
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    next_status = time.monotonic() + 5
    try:
        while not stopping:
            now = time.monotonic()
            for child in children:
                if child.proc is None and now >= child.next_start:
                    _start(child)
                elif child.proc is not None and child.proc.poll() is not None:
                    _reap(child, settings.run.restart_backoff_max_s, now)
            if now >= next_status:
                print("\n".join(status_lines(children)), flush=True)
                next_status = now + settings.run.status_interval_s
            time.sleep(0.2)
    finally:
        _stop(children)
    print("kubevents run: every process stopped", flush=True)
    return 0
